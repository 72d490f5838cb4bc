//! Opening connections to backend servers: TCP with a connect deadline, TCP_NODELAY, and nginx's send
//! timeout (the time between two successful writes) enforced on the socket itself.
//!
//! Written by hand rather than with hyper-util's `HttpConnector` because the send timeout must sit in
//! the connection's write path, and refused and timed-out connects must stay distinguishable (502 vs 504).

use http::uri::Authority;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Why a connection to a backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The backend did not accept within the connect timeout (answered 504).
    #[error("connect to {0} timed out")]
    TimedOut(String),
    /// The backend refused or the address is unreachable (answered 502).
    #[error("connect to {0} failed: {1}")]
    Failed(String, io::Error),
}

/// Send timeout errors carry this marker so the proxy can answer 504 instead of 502.
#[derive(Debug, thiserror::Error)]
#[error("upstream send timed out")]
pub(crate) struct SendTimedOut;

/// A connection to a backend: cleartext, or TLS over it (`tls_client`).
pub(crate) enum BackendIo {
    Plain(TimedStream),
    Tls(Box<tokio_rustls::client::TlsStream<TimedStream>>),
}

impl AsyncRead for BackendIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            BackendIo::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            BackendIo::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendIo::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            BackendIo::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendIo::Plain(io) => io.is_write_vectored(),
            BackendIo::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(io) => Pin::new(io).poll_flush(cx),
            BackendIo::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            BackendIo::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens backend connections with nginx's connect and send timeouts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Connector {
    /// nginx `proxy_connect_timeout`.
    pub(crate) connect_timeout: Duration,
    /// nginx `proxy_send_timeout`.
    pub(crate) send_timeout: Duration,
}

impl Connector {
    /// Connects to `authority` (`host:port`, resolved by the system).
    pub(crate) async fn connect(&self, authority: &Authority) -> Result<TimedStream, ConnectError> {
        let target = authority.as_str();
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(target)).await {
            Err(_) => return Err(ConnectError::TimedOut(target.to_owned())),
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => return Err(ConnectError::TimedOut(target.to_owned())),
            Ok(Err(e)) => return Err(ConnectError::Failed(target.to_owned(), e)),
            Ok(Ok(stream)) => stream,
        };
        stream.set_nodelay(true).map_err(|e| ConnectError::Failed(target.to_owned(), e))?;
        Ok(TimedStream { io: stream, send_timeout: self.send_timeout, write_deadline: None })
    }
}

/// A backend connection whose writes fail with `SendTimedOut` after waiting `send_timeout` without
/// progress. Reads are not timed here: the read timeout is armed per request by the proxy, since an
/// idle pooled connection waits for reads legitimately.
pub(crate) struct TimedStream {
    io: TcpStream,
    send_timeout: Duration,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl TimedStream {
    /// Called when a write made no progress: arms the timer on first call, errors once it fires.
    fn poll_write_stall(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let timeout = self.send_timeout;
        let deadline = self.write_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(io::ErrorKind::TimedOut, SendTimedOut)),
            Poll::Pending => Ok(()),
        }
    }

    fn finish_write<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => {
                self.poll_write_stall(cx)?;
                Poll::Pending
            }
            ready => {
                self.write_deadline = None;
                ready
            }
        }
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.finish_write(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.finish_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.finish_write(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
