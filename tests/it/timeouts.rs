//! nginx's upstream timeouts (connect, send, read) and the client-side limits, on tokio's paused clock:
//! the runtime jumps to the next timer whenever every task waits, so a 120 s timeout takes no time.

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::convert::Infallible;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const TIMEOUTS: &str = r#"timeouts = { connect = "30s", send = "60s", read = "120s" }"#;

/// Reads until the peer closes, returning what arrived.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received).await;
    received
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_answers_504() {
    // A listener that never accepts, its accept queue full: further connects hang in SYN_SENT.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(0).unwrap();
    let addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..3 {
        // The first fills the queue; later ones hang and are given up (on the paused clock, at once).
        if let Ok(Ok(stream)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
        {
            fillers.push(stream);
        }
    }
    let gw = TestGateway::start(&proxy_config(&addr.to_string(), TIMEOUTS)).await;
    let started = Instant::now();
    let (status, _, body) = fetch(gw.addr("127.0.0.1:0"), "/").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("upstream_connect_timeout"), "{body}");
    assert_eq!(started.elapsed().as_secs(), 30);
    drop(fillers);
}

#[tokio::test(start_paused = true)]
async fn read_timeout_before_the_response_head_answers_504() {
    let backend = Backend::start(|_| async {
        std::future::pending::<()>().await;
        Response::new(full(""))
    })
    .await;
    let gw = TestGateway::start(&proxy_config(&backend.authority(), TIMEOUTS)).await;
    let started = Instant::now();
    let (status, _, body) = fetch(gw.addr("127.0.0.1:0"), "/v1/chat").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("upstream_read_timeout"), "{body}");
    assert_eq!(started.elapsed().as_secs(), 120);
}

#[tokio::test(start_paused = true)]
async fn read_timeout_starts_once_a_slow_upload_is_sent() {
    // 100 s of upload, then 100 s of thinking: each within the 120 s read timeout, which nginx arms
    // once the request is sent, though together past it.
    let backend = Backend::start(|request| async move {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        tokio::time::sleep(Duration::from_secs(100)).await;
        Response::new(full(format!("read {} bytes", body.len())))
    })
    .await;
    // The client's pause is within its own body timeout.
    let config = format!("[http]\nclient_body_timeout = \"150s\"\n{}", proxy_config(&backend.authority(), TIMEOUTS));
    let gw = TestGateway::start(&config).await;
    let chunks = futures_util::stream::unfold(0, |sent| async move {
        match sent {
            0 => Some((Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first "))), 1)),
            1 => {
                tokio::time::sleep(Duration::from_secs(100)).await;
                Some((Ok(Frame::data(Bytes::from_static(b"second"))), 2))
            }
            _ => None,
        }
    });
    let request = Request::post("/v1/chat").header("host", "localhost").body(StreamBody::new(chunks).boxed()).unwrap();
    let started = Instant::now();
    let response = http1(gw.addr("127.0.0.1:0")).await.send_request(request).await.unwrap();
    let (status, _, body) = collect(response).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "read 12 bytes"));
    assert_eq!(started.elapsed().as_secs(), 200);
}

#[tokio::test(start_paused = true)]
async fn read_timeout_mid_response_cuts_the_client_off_without_a_clean_end() {
    let backend = Backend::start(|_| async {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n")))).await.unwrap();
        // Keep the stream open forever without sending more.
        tokio::spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        let mut rx = rx;
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Response::builder().header("content-type", "text/event-stream").body(StreamBody::new(stream).boxed()).unwrap()
    })
    .await;
    let gw = TestGateway::start(&proxy_config(&backend.authority(), TIMEOUTS)).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let response = client.send_request(get("/stream")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let started = Instant::now();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: 1\n\n");
    // An event stream is told why it ends, then cut off: never a clean end.
    let event = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let event = String::from_utf8_lossy(&event);
    assert!(event.starts_with("event: error\ndata: {") && event.contains("upstream_idle_timeout"), "{event}");
    assert_eq!(started.elapsed().as_secs(), 120);
    let end = body.frame().await;
    assert!(matches!(end, Some(Err(_))), "the client must see an incomplete response, got {end:?}");
}

#[tokio::test(start_paused = true)]
async fn send_timeout_answers_504_when_the_backend_stops_reading() {
    // A backend that accepts and never reads: the request body fills the socket buffers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let gw = TestGateway::start(&proxy_config(&addr.to_string(), TIMEOUTS)).await;
    let chunk = Bytes::from(vec![b'x'; 1 << 20]);
    let chunks = futures_util::stream::iter((0..256).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))));
    let request = Request::post("/v1/chat").header("host", "localhost").body(StreamBody::new(chunks).boxed()).unwrap();
    let started = Instant::now();
    let response = http1(gw.addr("127.0.0.1:0")).await.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(started.elapsed().as_secs(), 60);
    let (_, _, body) = collect(response).await;
    assert!(body.contains("upstream_send_timeout"), "{body}");
}

const LIMITS: &str = r#"
[http]
client_header_timeout = "10s"
keepalive_timeout = "5s"
keepalive_requests = 3
max_uri_size = "1k"
max_header_size = "16k"

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  return = { status = 200, body = "ok" }
"#;

#[tokio::test(start_paused = true)]
async fn an_incomplete_request_head_is_cut_off_after_client_header_timeout() {
    // With a longer keep-alive timeout, so that only the header timeout can cut it.
    let gw = TestGateway::start(&LIMITS.replace(r#"keepalive_timeout = "5s""#, r#"keepalive_timeout = "75s""#)).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr("127.0.0.1:0")).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: slow").await.unwrap();
    let started = Instant::now();
    let _ = read_to_close(&mut stream).await;
    assert_eq!(started.elapsed().as_secs(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_after_client_header_timeout() {
    // Cleartext with HTTP/2 offered: the first bytes decide the protocol, and none come.
    let gw = TestGateway::start(&LIMITS.replace(r#"keepalive_timeout = "5s""#, r#"keepalive_timeout = "75s""#)).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr("127.0.0.1:0")).await.unwrap();
    let started = Instant::now();
    let received = tokio::time::timeout(Duration::from_secs(3600), read_to_close(&mut stream)).await;
    assert!(received.expect("never closed").is_empty());
    assert_eq!(started.elapsed().as_secs(), 10);
}

/// An HTTP/2 connection (prior knowledge) that has had one GET answered 200: its sender, which keeps
/// it open from the client's side, and its task, which ends when the gateway closes it.
async fn h2c_after_one_request(
    addr: std::net::SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<TestBody>, tokio::task::JoinHandle<Result<(), hyper::Error>>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let response = sender.send_request(Request::get("http://a/").body(full("")).unwrap()).await.unwrap();
    assert_eq!(collect(response).await.0, StatusCode::OK);
    (sender, connection)
}

#[tokio::test(start_paused = true)]
async fn idle_keep_alive_connections_close_after_keepalive_timeout() {
    let gw = TestGateway::start(LIMITS).await;
    let addr = gw.addr("127.0.0.1:0");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let received = read_to_close(&mut stream).await;
    assert!(received.starts_with(b"HTTP/1.1 200"), "nothing answered");
    assert_eq!(started.elapsed().as_secs(), 5, "http/1.1");

    let (_sender, connection) = h2c_after_one_request(addr).await;
    let started = Instant::now();
    connection.await.unwrap().unwrap();
    assert_eq!(started.elapsed().as_secs(), 5, "h2");
}

/// The idle timer counts from the end of the last response: a request 3 s into a 5 s
/// `keepalive_timeout` keeps the connection open until 5 s after its own answer.
#[tokio::test(start_paused = true)]
async fn a_request_on_a_kept_alive_connection_starts_its_idle_time_again() {
    let gw = TestGateway::start(LIMITS).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr("127.0.0.1:0")).await.unwrap();
    let started = Instant::now();
    for pause in [Duration::ZERO, Duration::from_secs(3)] {
        tokio::time::sleep(pause).await;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\nok") {
            let mut byte = [0u8; 1];
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed early: {answer:?}");
            answer.push(byte[0]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"));
    }
    assert!(read_to_close(&mut stream).await.is_empty());
    assert_eq!(started.elapsed().as_secs(), 8);
}

/// Shutdown tells every open connection at once, through the gateway's set of them: an idle kept-alive
/// connection (HTTP/1.1 or HTTP/2) is closed without waiting for its `keepalive_timeout`, and the
/// drain completes.
#[tokio::test(start_paused = true)]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let gw = TestGateway::start(&LIMITS.replace(r#"keepalive_timeout = "5s""#, r#"keepalive_timeout = "75s""#)).await;
    let addr = gw.addr("127.0.0.1:0");
    let mut http1 = tokio::net::TcpStream::connect(addr).await.unwrap();
    http1.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 12];
    http1.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let (_sender, http2) = h2c_after_one_request(addr).await;

    let started = Instant::now();
    assert!(gw.gateway.shutdown().await, "the drain did not complete");
    assert!(started.elapsed() < Duration::from_secs(1), "the drain waited {:?}", started.elapsed());
    read_to_close(&mut http1).await;
    http2.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "closed after {:?}", started.elapsed());
}

#[tokio::test]
async fn keepalive_requests_closes_the_connection_after_the_last_one() {
    let gw = TestGateway::start(LIMITS).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    for i in 1..=3 {
        let (status, headers, _) = send(&mut client, get("/")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers.get("connection").is_some_and(|v| v == "close"), i == 3, "request {i}");
    }
}

#[tokio::test]
async fn oversized_uri_and_headers_answer_414_and_431() {
    let gw = TestGateway::start(LIMITS).await;
    let addr = gw.addr("127.0.0.1:0");
    let (status, _, _) = fetch(addr, &format!("/{}", "a".repeat(2000))).await;
    assert_eq!(status, StatusCode::URI_TOO_LONG);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(20_000));
    stream.write_all(big.as_bytes()).await.unwrap();
    let received = String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned();
    assert!(received.starts_with("HTTP/1.1 431"), "{received}");
}

mod generation {
    //! Timeouts shaped for generation, against the simulated model: first byte (prefill), idle (token
    //! gap) and total, each ending a stream with an SSE error event.
    use super::*;
    use infergate::sim::engine::LatencyModel;
    use infergate::sim::{Sim, SimOptions};

    fn stream_request() -> Request<TestBody> {
        let body = r#"{"stream": true, "max_tokens": 100000, "messages": [{"role": "user", "content": "hi"}]}"#;
        Request::post("/v1/chat/completions").header("host", "localhost").body(full(body)).unwrap()
    }

    async fn gateway_for(sim: &Sim, timeouts: &str) -> TestGateway {
        TestGateway::start(&proxy_config(&sim.addr.to_string(), &format!("timeouts = {timeouts}"))).await
    }

    /// Reads frames until the error event; returns it and when it came.
    async fn error_event(body: &mut hyper::body::Incoming) -> (String, Instant) {
        loop {
            let frame = body
                .frame()
                .await
                .expect("stream ended without an error event")
                .expect("cut off before the error event");
            let data = String::from_utf8_lossy(frame.data_ref().unwrap()).into_owned();
            if data.starts_with("event: error") {
                return (data, Instant::now());
            }
        }
    }

    /// Three tokens `decode_ms` apart after a 100 ms prefill, then silence, through a gateway whose
    /// idle timeout is `idle`: how long after the request its idle-timeout event came.
    async fn cut_after_three_tokens(decode_ms: f64, idle: &str) -> Duration {
        let model = LatencyModel { prefill_base_ms: 100.0, decode_ms, ..LatencyModel::default() };
        let sim =
            Sim::start(SimOptions { latency: model, stall_after: Some(3), ..SimOptions::default() }).await.unwrap();
        let gw = gateway_for(&sim, &format!(r#"{{ read = "120s", idle = "{idle}" }}"#)).await;
        let started = Instant::now();
        let response = http1(gw.addr("127.0.0.1:0")).await.send_request(stream_request()).await.unwrap();
        let mut body = response.into_body();
        let (event, at) = error_event(&mut body).await;
        assert!(event.contains("upstream_idle_timeout"), "{event}");
        assert!(matches!(body.frame().await, Some(Err(_))), "then cut off");
        assert_eq!(sim.stats()["aborted"], 1);
        at - started
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_stream_ends_one_idle_timeout_after_its_last_token() {
        // Tokens at 100, 120 and 140 ms against 30 s; and at 100, 700 and 1,300 ms against 1 s, where
        // the stream outlives the timer set at its first wait, which each later token puts off.
        // Timers round up to the millisecond.
        for (decode_ms, idle, due_ms) in [(20.0, "30s", 30_140), (600.0, "1s", 2_300)] {
            let took = cut_after_three_tokens(decode_ms, idle).await;
            let due = Duration::from_millis(due_ms);
            assert!((due..due + Duration::from_millis(5)).contains(&took), "{decode_ms} ms apart, {idle}: {took:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_generation_past_the_total_timeout_is_ended() {
        let model = LatencyModel { prefill_base_ms: 100.0, decode_ms: 20.0, ..LatencyModel::default() };
        let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
        let gw = gateway_for(&sim, r#"{ idle = "30s", total = "2s" }"#).await;
        let started = Instant::now();
        let response = http1(gw.addr("127.0.0.1:0")).await.send_request(stream_request()).await.unwrap();
        let mut body = response.into_body();
        let (event, at) = error_event(&mut body).await;
        assert!(event.contains("upstream_total_timeout"), "{event}");
        assert_eq!(at - started, Duration::from_secs(2));
        assert!(matches!(body.frame().await, Some(Err(_))));
        // The model saw the stream end, as it would see any client leave.
        assert_eq!(sim.stats()["aborted"], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_prefill_longer_than_first_byte_answers_504() {
        let model = LatencyModel { prefill_base_ms: 60_000.0, ..LatencyModel::default() };
        let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
        let gw = gateway_for(&sim, r#"{ read = "120s", first_byte = "5s" }"#).await;
        let started = Instant::now();
        let (status, _, body) = send(&mut http1(gw.addr("127.0.0.1:0")).await, stream_request()).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert!(body.contains("upstream_read_timeout"), "{body}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}

/// A backend that reads whole request bodies and says how long they were.
async fn body_reader() -> Backend {
    Backend::start(|request| async move {
        let body = request.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
        Response::new(full(format!("read {body} bytes")))
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn an_upload_that_stalls_is_answered_408_after_client_body_timeout_and_spares_the_backend() {
    let backend = body_reader().await;
    let other = body_reader().await;
    let upstream = |servers: &str| {
        format!(
            r#"[http]
client_body_timeout = "5s"

[[upstream]]
name = "model"
servers = [{servers}]

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "model"

  [[server.location]]
  prefix = "/routed/"
  models = {{ "m" = "model" }}
"#
        )
    };
    let one = format!(r#"{{ addr = "{}" }}"#, backend.authority());
    let two = format!(r#"{{ addr = "{}" }}, {{ addr = "{}" }}"#, backend.authority(), other.authority());
    // Streamed to the one server; read in full first to be kept for another; read to find the model.
    for (config, path) in [(&one, "/v1/chat/completions"), (&two, "/v1/chat/completions"), (&one, "/routed/x")] {
        let gw = TestGateway::start(&upstream(config)).await;
        let mut stream = tokio::net::TcpStream::connect(gw.addr("127.0.0.1:0")).await.unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{{\"model\"");
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let answer = String::from_utf8(read_to_close(&mut stream).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{path}: {answer}");
        assert!(answer.contains("request_timeout"), "{path}: {answer}");
        assert_eq!(started.elapsed().as_secs(), 5, "{path}");
        let servers = &gw.gateway.runtime().upstreams["model"].servers;
        assert!(servers.iter().all(|s| s.health.is_up()), "{path}: a slow client is no server's failure");
        // Data that keeps coming, each part within the timeout, is never cut.
        let mut stream = tokio::net::TcpStream::connect(gw.addr("127.0.0.1:0")).await.unwrap();
        let head =
            format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 13\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        for part in ["{\"model\"", ":\"m\"", "}"] {
            tokio::time::sleep(Duration::from_secs(4)).await;
            stream.write_all(part.as_bytes()).await.unwrap();
        }
        let answer = String::from_utf8(read_to_close(&mut stream).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("read 13 bytes"), "{path}: {answer}");
    }
}

/// A backend that waits `delay` (the model's queue and prefill), then answers `status` with an event
/// stream of one token.
async fn slow_model(delay: Duration, status: StatusCode) -> Backend {
    Backend::start(move |_| async move {
        tokio::time::sleep(delay).await;
        let events = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
        Response::builder().status(status).header("content-type", "text/event-stream").body(full(events)).unwrap()
    })
    .await
}

fn streamed_chat() -> Request<TestBody> {
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    Request::post("/v1/chat/completions").header("host", "localhost").body(full(body)).unwrap()
}

/// Each frame of `response`'s body with the seconds (paused clock) since `started` it came at.
async fn timed_frames(response: Response<hyper::body::Incoming>, started: Instant) -> Vec<(u64, String)> {
    let mut body = response.into_body();
    let mut frames = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            frames.push((started.elapsed().as_secs(), String::from_utf8_lossy(&data).into_owned()));
        }
    }
    frames
}

#[tokio::test(start_paused = true)]
async fn a_slow_stream_gets_its_head_and_keep_alive_comments_until_the_first_event() {
    let keepalive = |backend: &Backend| {
        let logged = "[admin]\nlisten = \"127.0.0.1:0\"\n[http]\naccess_log = { path = \"access.log\", format = \"upstream\" }\n\
                      log_format = { upstream = \"$status $upstream_addr $upstream_status $upstream_header_time $response_end\" }\n";
        logged.to_string()
            + &proxy_config(&backend.authority(), TIMEOUTS)
                .replace("  proxy = \"backend\"", "  proxy = \"backend\"\n  sse_keepalive = \"15s\"")
    };
    let model = slow_model(Duration::from_secs(40), StatusCode::OK).await;
    let gw = TestGateway::start(&keepalive(&model)).await;
    let started = Instant::now();
    let response = http1(gw.addr("127.0.0.1:0")).await.send_request(streamed_chat()).await.unwrap();
    assert_eq!(
        (response.status(), started.elapsed().as_secs()),
        (StatusCode::OK, 15),
        "the head at the first interval"
    );
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let frames = timed_frames(response, started).await;
    assert_eq!(frames[0], (15, ": keep-alive\n\n".to_string()));
    assert_eq!(frames[1], (30, ": keep-alive\n\n".to_string()));
    assert_eq!(frames[2].0, 40, "then the model's events as they come: {frames:?}");
    assert!(frames[2..].iter().map(|(_, text)| text.as_str()).collect::<String>().ends_with("data: [DONE]\n\n"));
    // The model's figures are recorded as for any stream: its exchange, and the first token as the
    // client saw it, 40 s after the request.
    let logged = lines(&gw.path("access.log"), 1).await;
    assert_eq!(logged[0], format!("200 {} 200 40.000 complete", model.authority()));
    let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();
    let (_, _, metrics) = send(&mut http1(admin).await, get("/metrics")).await;
    let sample = |name: &str| {
        let mut lines = metrics.lines().filter(|line| line.starts_with(name) && line.contains("location=\"/\""));
        let line = lines.next().unwrap_or_else(|| panic!("{name}: {metrics}"));
        line.rsplit(' ').next().unwrap().parse::<f64>().unwrap()
    };
    assert_eq!(sample("infergate_time_to_first_token_seconds_count"), 1.0);
    assert!((40.0..40.1).contains(&sample("infergate_time_to_first_token_seconds_sum")), "{metrics}");

    // The model's error after the head arrives as an SSE error event.
    let failing = slow_model(Duration::from_secs(20), StatusCode::SERVICE_UNAVAILABLE).await;
    let gw = TestGateway::start(&keepalive(&failing)).await;
    let started = Instant::now();
    let response = http1(gw.addr("127.0.0.1:0")).await.send_request(streamed_chat()).await.unwrap();
    let frames = timed_frames(response, started).await;
    assert_eq!(frames[0], (15, ": keep-alive\n\n".to_string()));
    let (at, event) = &frames[1];
    assert_eq!(*at, 20);
    assert!(
        event.starts_with("event: error\ndata: {") && event.contains("\"bad_gateway\"") && event.contains("503"),
        "{event}"
    );
    assert_eq!(frames.len(), 2);

    // A stream the model answers in time, and a request that does not stream, are answered as they were.
    let quick = slow_model(Duration::from_secs(2), StatusCode::OK).await;
    let gw = TestGateway::start(&keepalive(&quick)).await;
    let started = Instant::now();
    let response = http1(gw.addr("127.0.0.1:0")).await.send_request(streamed_chat()).await.unwrap();
    assert_eq!(started.elapsed().as_secs(), 2);
    assert!(!timed_frames(response, started).await.iter().any(|(_, text)| text.contains("keep-alive")));
    let gw = TestGateway::start(&keepalive(&model)).await;
    let started = Instant::now();
    let json = Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .body(full(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#))
        .unwrap();
    let response = http1(gw.addr("127.0.0.1:0")).await.send_request(json).await.unwrap();
    assert_eq!(started.elapsed().as_secs(), 40, "no early head for an answer that does not stream");
    drop(response);
}
