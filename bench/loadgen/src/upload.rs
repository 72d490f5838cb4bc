//! `upload`: large request bodies (a chat request carrying a base64 image) sent through a proxy to
//! a backend of this process's own, which reads each body whole and then answers at once. What is
//! timed is the wait a client sees between writing its body's last byte and reading the answer's
//! first: how long the proxy holds the body before the backend has all of it (nginx buffers a body
//! whole, to disk beyond 16 KB, before it sends a byte on; a streaming proxy passes it as it comes).
//!
//! Plain HTTP/1.1 written and read by hand on both ends, so that the two instants are the bytes'
//! own and no client library's buffering sits between them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What one run sends.
pub(crate) struct Uploads {
    /// The proxy's address.
    pub(crate) addr: SocketAddr,
    /// Bytes of each body.
    pub(crate) bytes: usize,
    /// Uploads per client, one after another on one keep-alive connection.
    pub(crate) requests: usize,
    /// Clients at once.
    pub(crate) clients: usize,
    /// Each client's sending pace in bytes a second (`None`: as fast as the socket takes them).
    pub(crate) rate: Option<f64>,
}

/// Serves on `listen` what the proxies forward to: reads a request's head and its
/// `Content-Length` bytes, then answers a small 200. Runs until the process ends.
pub(crate) async fn backend(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = serve(stream).await;
            });
        }
    });
    Ok(())
}

async fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffer = vec![0u8; 256 * 1024];
    let mut held = 0;
    loop {
        // The head, then the body's bytes left after it.
        let end = loop {
            if let Some(at) = buffer[..held].windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let read = stream.read(&mut buffer[held..]).await?;
            if read == 0 {
                return Ok(());
            }
            held += read;
        };
        let length = content_length(&buffer[..end]).ok_or_else(|| std::io::Error::other("no content-length"))?;
        let mut left = length.saturating_sub(held - end);
        let rest = (held - end).saturating_sub(length);
        buffer.copy_within(held - rest..held, 0);
        held = rest;
        while left > 0 {
            let read = stream.read(&mut buffer[..]).await?;
            if read == 0 {
                return Ok(());
            }
            let body = read.min(left);
            left -= body;
            buffer.copy_within(body..read, 0);
            held = read - body;
        }
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}").await?;
    }
}

/// The `Content-Length` of a request or response head.
fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
    })
}

/// A chat request of `bytes` bytes in all, most of them a base64 image.
fn body(bytes: usize) -> Vec<u8> {
    let start = br#"{"model":"glm-4v-flash","messages":[{"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,"#;
    let end = br#""}}]}]}"#;
    let mut body = Vec::with_capacity(bytes);
    body.extend_from_slice(start);
    let fill = bytes.saturating_sub(start.len() + end.len());
    body.extend((0..fill).map(|i| b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i % 64]));
    body.extend_from_slice(end);
    body
}

/// Runs `uploads`; prints the milliseconds from each body's last byte written to its answer's first
/// byte read (`wait_p50_ms`, ...), and how many were answered 200 (`ok`, `failed`).
pub(crate) async fn run(uploads: Uploads) -> Result<(), String> {
    let body = std::sync::Arc::new(body(uploads.bytes));
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut tasks = Vec::new();
    for _ in 0..uploads.clients {
        let (body, head) = (body.clone(), head.clone());
        let (addr, requests, rate) = (uploads.addr, uploads.requests, uploads.rate);
        tasks.push(tokio::spawn(async move {
            let mut waits = Vec::new();
            let mut failed = 0u64;
            let mut stream: Option<TcpStream> = None;
            for _ in 0..requests {
                if stream.is_none() {
                    stream = TcpStream::connect(addr).await.ok();
                }
                let Some(connection) = stream.as_mut() else {
                    failed += 1;
                    continue;
                };
                // An upload that takes over a minute has failed.
                match tokio::time::timeout(Duration::from_secs(60), upload(connection, &head, &body, rate)).await {
                    Ok(Ok(wait)) => waits.push(wait.as_secs_f64() * 1000.0),
                    failure => {
                        if failed == 0 {
                            let why = failure.map_or_else(|_| "no answer within 60 s".to_string(), |r| r.unwrap_err());
                            eprintln!("infergate-load: an upload failed: {why}");
                        }
                        failed += 1;
                        stream = None;
                    }
                }
            }
            (waits, failed)
        }));
    }
    let (waits, failed) = crate::joined(tasks).await?;
    let ok = waits.len();
    crate::summary("wait", waits);
    println!("ok={ok} failed={failed}");
    Ok(())
}

/// Sends one upload on `stream` (at `rate` bytes a second, if set) and reads its answer: the time
/// from its last byte written to the answer's first byte read.
async fn upload(stream: &mut TcpStream, head: &str, body: &[u8], rate: Option<f64>) -> Result<Duration, String> {
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut sent = 0;
    for piece in body.chunks(64 * 1024) {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        stream.write_all(piece).await.map_err(|e| e.to_string())?;
        sent += piece.len();
    }
    let last_byte = Instant::now();
    let mut answer = Vec::with_capacity(512);
    let mut buffer = [0u8; 4096];
    let mut first_byte = None;
    let end = loop {
        let read = stream.read(&mut buffer).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("closed before the answer".into());
        }
        first_byte.get_or_insert_with(Instant::now);
        answer.extend_from_slice(&buffer[..read]);
        if let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(String::from_utf8_lossy(&answer[..end]).into_owned());
    }
    let length = content_length(&answer[..end]).unwrap_or(0);
    while answer.len() < end + length {
        let read = stream.read(&mut buffer).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("closed inside the answer".into());
        }
        answer.extend_from_slice(&buffer[..read]);
    }
    Ok(first_byte.unwrap_or(last_byte) - last_byte)
}
