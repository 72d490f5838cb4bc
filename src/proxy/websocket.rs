//! WebSocket (HTTP/1.1 Upgrade) pass-through: once both sides switched protocols, bytes are copied
//! both ways until either side closes or nothing moves for the location's read timeout.

use crate::upstream::UpgradedBackend;
use crate::wire::message::has_token;
use crate::wire::upgrade::PendingUpgrade;
use http::{header, Request};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// An HTTP/1.1 request asking to switch protocols (`Connection: upgrade` with an `Upgrade` header).
pub(super) fn is_upgrade_request<B>(request: &Request<B>) -> bool {
    request.version() == http::Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && request.headers().get_all(header::CONNECTION).iter().any(|v| has_token(v.as_bytes(), b"upgrade"))
}

/// Copies bytes between the upgraded client and backend connections; ends on close, error, or `idle`
/// without traffic in either direction.
pub(super) async fn tunnel(client: PendingUpgrade, mut upstream: UpgradedBackend, idle: Duration) {
    let client = match client.upgraded().await {
        Ok(client) => client,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    let start = Instant::now();
    let last_activity = Arc::new(AtomicU64::new(0));
    let mut client = Activity { io: client, start, last_activity: last_activity.clone() };
    let watchdog = async {
        loop {
            let last = start + Duration::from_millis(last_activity.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "websocket tunnel ended with an error");
            }
        }
        () = watchdog => tracing::debug!("websocket tunnel idle for {idle:?}, closed"),
    }
}

/// The client side of a tunnel, recording when bytes last moved in either direction (every byte to
/// the backend is read from it and every byte from the backend is written to it).
struct Activity<T> {
    io: T,
    start: Instant,
    last_activity: Arc<AtomicU64>,
}

impl<T> Activity<T> {
    fn touch(&self) {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity.store(elapsed, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if poll.is_ready() {
            self.touch();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        if poll.is_ready() {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
