//! Upstream servers found by DNS: the gateway asks a DNS server of the test's own on 127.0.0.1
//! (`[http] resolver`), whose answers (A records, and SRV records with ports) the test changes; the
//! traffic follows the answers as their TTL runs out.

use crate::support::*;
use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use http::Response;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A DNS server on 127.0.0.1: `model.test` is 127.0.0.1 (TTL 1 s), and `_model._tcp.test` lists
/// `model.test` on the ports in `ports` (TTL 1 s). Returns its address.
async fn dns(ports: Arc<Mutex<Vec<u16>>>) -> std::net::SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
            let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
            let mut answer = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            answer.metadata.authoritative = true;
            answer.metadata.recursion_desired = query.metadata.recursion_desired;
            answer.metadata.recursion_available = true;
            for question in &query.queries {
                let name = question.name().clone();
                let text = name.to_ascii().to_lowercase();
                match (question.query_type(), text.trim_end_matches('.')) {
                    (RecordType::A, "model.test") => {
                        answer.add_answer(Record::from_rdata(name, 1, RData::A(A(Ipv4Addr::LOCALHOST))));
                    }
                    (RecordType::SRV, "_model._tcp.test") => {
                        for port in ports.lock().unwrap().iter() {
                            let target = Name::from_ascii("model.test.").unwrap();
                            answer.add_answer(Record::from_rdata(
                                name.clone(),
                                1,
                                RData::SRV(SRV::new(0, 1, *port, target)),
                            ));
                        }
                    }
                    _ => {}
                }
                answer.add_query(question.clone());
            }
            let _ = socket.send_to(&answer.to_vec().unwrap(), from).await;
        }
    });
    addr
}

fn named(
    answer: &'static str,
) -> impl Fn(http::Request<hyper::body::Incoming>) -> std::future::Ready<Response<TestBody>> + Clone {
    move |_| std::future::ready(Response::new(full(answer)))
}

fn config(resolver: std::net::SocketAddr, server: &str) -> String {
    format!(
        r#"
[http]
resolver = "{resolver}"

[[upstream]]
name = "model"
servers = [{server}]

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "model"
"#
    )
}

/// Answers of `addr` until one is `want`, asking for at most 10 s.
async fn until_answered(addr: std::net::SocketAddr, want: &str) {
    let started = Instant::now();
    loop {
        let (_, _, body) = fetch(addr, "/").await;
        if body == want {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still {body:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_the_srv_answer_as_it_changes() {
    let (a, b) = (Backend::start(named("a")).await, Backend::start(named("b")).await);
    let port = |backend: &Backend| backend.authority().rsplit_once(':').unwrap().1.parse::<u16>().unwrap();
    let ports = Arc::new(Mutex::new(vec![port(&a)]));
    let resolver = dns(ports.clone()).await;
    let gw = TestGateway::start(&config(resolver, r#"{ addr = "_model._tcp.test", srv = true }"#)).await;
    let addr = gw.addr("127.0.0.1:0");
    // Looked up before the first request.
    assert_eq!(fetch(addr, "/").await.2, "a");
    // The answer changes: `a` vanishes, `b` appears, within about the TTL (1 s).
    *ports.lock().unwrap() = vec![port(&b)];
    until_answered(addr, "b").await;
    for _ in 0..4 {
        assert_eq!(fetch(addr, "/").await.2, "b", "the server that vanished gets nothing");
    }
    // Both: both serve.
    *ports.lock().unwrap() = vec![port(&a), port(&b)];
    until_answered(addr, "a").await;
    let servers = gw.gateway.runtime().upstreams["model"].servers.len();
    assert_eq!(servers, 2);
}

#[tokio::test]
async fn a_name_resolves_to_its_addresses_with_the_configured_port() {
    let a = Backend::start(named("a")).await;
    let resolver = dns(Arc::default()).await;
    let port = a.authority().rsplit_once(':').unwrap().1.to_string();
    let gw =
        TestGateway::start(&config(resolver, &format!(r#"{{ addr = "model.test:{port}", resolve = true }}"#))).await;
    assert_eq!(fetch(gw.addr("127.0.0.1:0"), "/").await.2, "a");
    let server = &gw.gateway.runtime().upstreams["model"].servers[0];
    assert_eq!(server.authority.as_str(), format!("127.0.0.1:{port}"));
}

#[test]
fn dns_servers_are_checked_at_load() {
    let source = |text: String| infergate::config::Source { name: "t.toml".into(), dir: ".".into(), text };
    let resolver = "127.0.0.1:53".parse().unwrap();
    let both = config(resolver, r#"{ addr = "_m._tcp.test", srv = true, resolve = true }"#);
    let errors = infergate::config::load(&source(both)).unwrap_err().to_string();
    assert!(errors.contains("`resolve` (A/AAAA) or `srv`, not both"), "{errors}");
    let srv = config(resolver, r#"{ addr = "model.test:80", srv = true }"#);
    let errors = infergate::config::load(&source(srv)).unwrap_err().to_string();
    assert!(errors.contains("names SRV records, as `_service._proto.name`"), "{errors}");
    let bad = config(resolver, r#"{ addr = "h:1" }"#).replace("127.0.0.1:53", "dns.local");
    let errors = infergate::config::load(&source(bad)).unwrap_err().to_string();
    assert!(errors.contains("invalid resolver \"dns.local\""), "{errors}");
}
