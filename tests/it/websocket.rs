//! WebSocket (HTTP/1.1 Upgrade) through the gateway, both ways, with the read timeout as idle limit.

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server that echoes every text message prefixed with "echo: ".
async fn echo_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message {
                        if ws.send(Message::text(format!("echo: {text}"))).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn connect(gw: &TestGateway) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let addr = gw.addr("127.0.0.1:0");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream).await.unwrap();
    assert_eq!(response.status(), 101);
    ws
}

#[tokio::test]
async fn messages_flow_both_ways() {
    let backend = echo_backend().await;
    let gw = TestGateway::start(&proxy_config(&backend.to_string(), "")).await;
    let mut ws = connect(&gw).await;
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("echo: hello {i}"));
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_tunnel_closes_after_the_read_timeout() {
    let backend = echo_backend().await;
    let gw = TestGateway::start(&proxy_config(&backend.to_string(), r#"timeouts = { read = "120s" }"#)).await;
    let mut ws = connect(&gw).await;
    ws.send(Message::text("ping")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    let started = Instant::now();
    let end = ws.next().await;
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "unexpected message {end:?}");
    assert_eq!(started.elapsed().as_secs(), 120);
}
