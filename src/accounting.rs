//! Per-request accounting, done once at the end: when the response body finished, failed, or the
//! client left (before or during the response). One `Record` per request feeds the access log (and
//! whatever else reports on requests), so they never disagree. Costs nothing when no log is configured.

use crate::access_log::AccessLog;
use crate::body::{BoxError, ResponseBody};
use crate::policy::connlimit::ConnGuard;
use crate::proxy::ClientInfo;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// What the proxy tells accounting about the backend exchange, as a response extension.
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    /// The server's `host:port`.
    pub addr: http::uri::Authority,
    /// The backend's status.
    pub status: u16,
    /// From the request's start to the upstream exchange's start (queueing, retries).
    pub started_after: Duration,
    /// From the exchange's start to the response head (`$upstream_header_time`).
    pub header_time: Duration,
}

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Every byte was handed to the connection.
    Complete,
    /// The client left before the end (before the head, nginx's 499).
    ClientClosed,
    /// The body failed (a backend cut off or timed out mid-response).
    Error,
}

/// Everything known about one request when it ends.
pub struct Record {
    /// The client (behind trusted proxies, the forwarded one).
    pub client_ip: IpAddr,
    /// Whether the client connection is TLS.
    pub https: bool,
    /// The request method.
    pub method: Method,
    /// Path and query as sent.
    pub request_uri: String,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub protocol: &'static str,
    /// The Host (or HTTP/2 authority).
    pub host: String,
    /// The request's `X-Request-Id`.
    pub request_id: HeaderValue,
    /// The request headers the configured formats read.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The response status (499 when the client left before it).
    pub status: u16,
    /// Body bytes handed to the client.
    pub body_bytes: u64,
    started: Instant,
    /// From the request's head to the response's end.
    pub duration: Duration,
    /// Wall-clock time of the end.
    pub ended_at: SystemTime,
    /// The backend exchange, for proxied requests.
    pub upstream: Option<UpstreamInfo>,
    /// How the response ended.
    pub end: BodyEnd,
    /// Where the record goes (the location's access log).
    log: Option<Arc<AccessLog>>,
}

impl Record {
    /// A request header the formats asked to keep.
    pub fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.to_str().ok())
    }

    /// From the upstream exchange's start to the response's end (nginx's `$upstream_response_time`).
    pub fn upstream_response_time(&self) -> Option<Duration> {
        self.upstream.as_ref().map(|u| self.duration.saturating_sub(u.started_after))
    }

    fn finish(mut self, end: BodyEnd) {
        self.end = end;
        self.duration = self.started.elapsed();
        self.ended_at = SystemTime::now();
        if let Some(log) = &self.log {
            log.log(&self);
        }
    }
}

/// A request being accounted: created with the request, routed to its location's log, and attached
/// to the response body. Dropped before a response exists (the client left), it records a 499.
pub struct Accounting(Option<Box<Record>>);

impl Accounting {
    /// Starts the record, keeping the request headers in `keep`; `None` (no access log anywhere)
    /// accounts nothing.
    pub fn begin<B>(
        keep: Option<&[HeaderName]>,
        client: &ClientInfo,
        request: &Request<B>,
        request_id: &HeaderValue,
    ) -> Accounting {
        let Some(keep) = keep else {
            return Accounting(None);
        };
        let headers = request.headers();
        let protocol = match request.version() {
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        };
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| request.uri().host());
        Accounting(Some(Box::new(Record {
            client_ip: client.peer.ip(),
            https: client.https,
            method: request.method().clone(),
            request_uri: request.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_string(),
            protocol,
            host: host.unwrap_or("").to_string(),
            request_id: request_id.clone(),
            headers: keep.iter().filter_map(|name| Some((name.clone(), headers.get(name)?.clone()))).collect(),
            status: 499,
            body_bytes: 0,
            started: Instant::now(),
            duration: Duration::ZERO,
            ended_at: SystemTime::UNIX_EPOCH,
            upstream: None,
            end: BodyEnd::ClientClosed,
            log: None,
        })))
    }

    /// Sends the record to `log` (the routed location's or server's; `None`: not logged there).
    pub fn route(&mut self, log: Option<&Arc<AccessLog>>) {
        if let Some(record) = &mut self.0 {
            record.log = log.cloned();
        }
    }

    /// Attaches the record (and the concurrency places the request holds) to the response body, which
    /// finishes the record when it ends or is dropped.
    pub fn attach(mut self, mut response: Response<ResponseBody>, places: Vec<ConnGuard>) -> Response<ResponseBody> {
        let record = self.0.take().map(|mut record| {
            record.status = response.status().as_u16();
            record.upstream = response.extensions_mut().remove::<UpstreamInfo>();
            record
        });
        if record.is_none() && places.is_empty() {
            return response;
        }
        response
            .map(|inner| ResponseBody::Tracked { inner: Box::new(TrackedBody { inner, places, record, end: None }) })
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        if let Some(record) = self.0.take() {
            record.finish(BodyEnd::ClientClosed);
        }
    }
}

/// A response body that counts its bytes and, when it ends or is dropped, releases the request's
/// concurrency places and finishes its record.
pub struct TrackedBody {
    inner: ResponseBody,
    places: Vec<ConnGuard>,
    record: Option<Box<Record>>,
    end: Option<BodyEnd>,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let (Some(record), Some(data)) = (&mut this.record, frame.data_ref()) {
                    record.body_bytes += data.len() as u64;
                }
            }
            Some(Err(_)) => this.end = Some(BodyEnd::Error),
            None => this.end = Some(BodyEnd::Complete),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.places.clear();
        if let Some(record) = self.record.take() {
            let end = match self.end {
                Some(end) => end,
                // hyper does not poll a body that is empty from the start.
                None if self.inner.is_end_stream() => BodyEnd::Complete,
                None => BodyEnd::ClientClosed,
            };
            record.finish(end);
        }
    }
}
