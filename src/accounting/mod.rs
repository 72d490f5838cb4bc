//! Per-request accounting, done once at the end: when the response body finished, failed, or the
//! client left (before or during the response). One `Record` per request feeds the access log and
//! the metrics, so they never disagree. Costs nothing when neither is configured.
//!
//! Accounting reads the running config through `Books` (the runtime is one), and wraps whatever
//! response body the pipeline hands it, so it names no module above its own layer. A request made
//! with an API key adds its key's usage (`keys::usage`) from the body's meter reading, and a line to
//! the usage log.

pub(crate) mod access_log;

use crate::client::ClientInfo;
use crate::cost;
use crate::error::BoxError;
use crate::error::{ErrorCode, StreamTimedOut};
use crate::keys::meter::MeterReading;
use crate::keys::ApiKey;
use crate::metrics::LocationMetrics;
use crate::policy::connlimit::ConnGuard;
use access_log::{AccessLog, AccessLogs};
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Where the requests of one location (or of a server's unmatched paths) are accounted.
pub(crate) struct Account {
    /// Its metric handles.
    pub(crate) metrics: LocationMetrics,
    /// Its access log, if any.
    pub(crate) log: Option<Arc<AccessLog>>,
}

/// What accounting keeps of a running config: whether requests are accounted at all, the access log
/// files, and the accounts locations are routed to.
pub struct Ledger {
    /// Whether requests are accounted (metrics kept, or an access log anywhere).
    pub(crate) enabled: bool,
    /// Whether metrics are kept: `[admin] metrics`, and an admin API to serve them.
    pub(crate) metrics_kept: bool,
    /// Access log files and formats, kept by reloads.
    pub access_logs: AccessLogs,
    /// Where each location's (and each server's no-match) requests are accounted, by `Account` id.
    pub(crate) accounts: Vec<Account>,
}

/// A response body that may carry a meter reading (`keys::meter`): the model and tokens of a request
/// made with an API key.
pub(crate) trait Metering {
    /// The reading, taken once, when the response ends.
    fn take_reading(&mut self) -> Option<MeterReading>;
    /// Whether the body is metered: its reading will hold the stream's completion tokens.
    fn meters_usage(&self) -> bool;
    /// The backend exchange the body comes from, through any wrapper; for a body whose head went
    /// out before the backend's (`sse_keepalive`), once the backend answered.
    fn upstream_info(&self) -> Option<UpstreamInfo>;
}

/// What accounting reads of the running config for the requests it records: its ledger, and the
/// address of the server an exchange names. A record holds its request's handle on the config for
/// as long as the request lives, so a reload never takes a location's account from under it.
pub(crate) trait Books: Send + Sync {
    /// The config's ledger.
    fn ledger(&self) -> &Ledger;
    /// The `host:port` of server `server` of upstream `upstream` (by `Upstream::id`).
    fn server_authority(&self, upstream: usize, server: usize) -> Option<&str>;
}

/// What the proxy tells accounting about the backend exchange; it rides in the response body
/// (the pipeline's `ResponseBody::upstream_info`). Plain values, so copying it touches no shared counter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamInfo {
    /// The upstream's `Upstream::id`.
    pub(crate) upstream: usize,
    /// The server's index in its upstream.
    pub(crate) server: usize,
    /// The backend's status.
    pub(crate) status: u16,
    /// From the request's start to the upstream exchange's start (queueing, retries).
    pub(crate) started_after: Duration,
    /// From the exchange's start to the response head (`$upstream_header_time`).
    pub(crate) header_time: Duration,
    /// When the response head arrived, for the latency the gateway adds.
    pub(crate) head_at: Instant,
    /// The backend answered `text/event-stream`: the record keeps its token timing.
    pub(crate) event_stream: bool,
}

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// Every byte was handed to the connection.
    Complete,
    /// The client left before the end (before the head, nginx's 499).
    ClientClosed,
    /// A timeout cut the response (idle, total, or a drained server's grace).
    Timeout,
    /// The body failed (the backend cut off or broke the protocol).
    Error,
}

impl BodyEnd {
    /// As the metrics' `reason` label writes it (`metrics::STREAM_ENDS`).
    fn reason(self) -> &'static str {
        match self {
            BodyEnd::Complete => "complete",
            BodyEnd::ClientClosed => "client",
            BodyEnd::Timeout => "timeout",
            BodyEnd::Error => "upstream_error",
        }
    }
}

/// What an event stream's record adds.
#[derive(Debug, Default, Clone)]
pub(crate) struct StreamStats {
    /// From the request head to the first data event.
    pub(crate) first_token: Option<Duration>,
    /// `completion_tokens` of the stream's `usage`, if it reported one.
    pub(crate) output_tokens: Option<u64>,
    last_event: Option<Instant>,
}

/// The request as the access log prints it. Made only when an access log is configured: metrics
/// need none of it, and copying it cost a fifth of what accounting adds to a request.
pub(crate) struct LoggedRequest {
    /// The client (behind trusted proxies, the forwarded one).
    pub(crate) client_ip: IpAddr,
    /// Whether the client connection is TLS.
    pub(crate) https: bool,
    /// The request method.
    pub(crate) method: Method,
    /// The request target as sent.
    pub(crate) uri: Uri,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub(crate) protocol: &'static str,
    host: Option<HeaderValue>,
    /// The request's `X-Request-Id`.
    pub(crate) request_id: HeaderValue,
    /// The request headers the configured log formats read.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl LoggedRequest {
    /// A request header the formats asked to keep.
    pub(crate) fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.to_str().ok())
    }

    /// Path and query as sent.
    pub(crate) fn request_uri(&self) -> &str {
        self.uri.path_and_query().map_or("/", |pq| pq.as_str())
    }

    /// The Host (or HTTP/2 authority), or `""`.
    pub(crate) fn host(&self) -> &str {
        self.host.as_ref().and_then(|h| h.to_str().ok()).or_else(|| self.uri.host()).unwrap_or("")
    }
}

/// Everything known about one request when it ends.
pub(crate) struct Record {
    /// The request itself, for the access log; `None` when no access log is configured.
    pub(crate) request: Option<Box<LoggedRequest>>,
    /// The response status (499 when the client left before it).
    pub(crate) status: u16,
    /// The code of an error the gateway answered itself.
    pub(crate) error_code: Option<&'static str>,
    /// Body bytes handed to the client.
    pub(crate) body_bytes: u64,
    started: Instant,
    /// From the request's head to the response's end.
    pub(crate) duration: Duration,
    /// Wall-clock time of the end.
    pub(crate) ended_at: SystemTime,
    /// The backend exchange, for proxied requests.
    pub(crate) upstream: Option<UpstreamInfo>,
    /// For event streams: tokens and timing.
    pub(crate) stream: Option<StreamStats>,
    /// How the response ended.
    pub(crate) end: BodyEnd,
    /// The API key the request was made with.
    pub(crate) key: Option<Arc<ApiKey>>,
    /// What its response used, for a request that named a key's model.
    pub(crate) reading: Option<MeterReading>,
    /// The config the request ran on (the connection's own handle, so cloning it is free of
    /// cross-core traffic) and its account there, once routed.
    books: Arc<dyn Books>,
    account: Option<usize>,
    metrics_on: bool,
}

impl Record {
    /// The `host:port` of the server that answered.
    pub(crate) fn upstream_addr(&self) -> Option<&str> {
        let info = self.upstream?;
        self.books.server_authority(info.upstream, info.server)
    }

    fn account(&self) -> Option<&Account> {
        self.books.ledger().accounts.get(self.account?)
    }

    fn metrics(&self) -> Option<&LocationMetrics> {
        self.account().filter(|_| self.metrics_on).map(|a| &a.metrics)
    }

    /// From the upstream exchange's start to the response's end (nginx's `$upstream_response_time`).
    pub(crate) fn upstream_response_time(&self) -> Option<Duration> {
        self.upstream.as_ref().map(|u| self.duration.saturating_sub(u.started_after))
    }

    fn finish(&mut self, end: BodyEnd) {
        self.end = end;
        self.duration = self.started.elapsed();
        // A metered stream's completion tokens are its reading's (its usage chunk, when the gateway
        // asked for it, never reached the client's bytes).
        if let (Some(stream), Some(reading)) = (&mut self.stream, &self.reading) {
            stream.output_tokens.get_or_insert(reading.spend.completion);
        }
        if let Some(metrics) = self.metrics() {
            metrics.request(self.upstream.map(|u| u.upstream), self.status, self.duration, self.error_code);
            if let Some(stream) = &self.stream {
                metrics.stream(self.end.reason(), stream.first_token, stream.output_tokens);
            }
        }
        let books = self.books.clone();
        let ledger = books.ledger();
        let log = self.account.and_then(|id| ledger.accounts.get(id)?.log.as_ref());
        let usage_log = ledger.access_logs.usage_log().filter(|_| self.reading.is_some());
        if (log.is_some() || usage_log.is_some()) && self.request.is_some() {
            self.ended_at = SystemTime::now();
        }
        if let (Some(key), Some(reading)) = (&self.key, &self.reading) {
            key.usage.add(&reading.label, &reading.spend);
        }
        if let Some(request) = &self.request {
            if let Some(log) = log {
                log.log(self, request);
            }
            if let Some(usage_log) = usage_log {
                usage_log.write(|line| access_log::usage_line(line, self, request));
            }
        }
    }

    /// Notes the backend exchange of a stream that answered after its head went out: its figures
    /// (`$upstream_*`, the stream's token timing) are recorded as if it had answered at once, the
    /// stream's first token timed from the request's start, as the client saw it.
    fn answered_late(&mut self, upstream: Option<UpstreamInfo>) {
        self.upstream = upstream;
        if upstream.is_some_and(|upstream| upstream.event_stream) {
            self.stream = Some(StreamStats::default());
        }
    }

    /// Notes a data frame of an event stream: the first token's time, the gap since the last event,
    /// and the token count once `usage` arrives (unless the body is `metered`: its reading has it).
    fn observe_event(&mut self, data: &[u8], metered: bool) {
        if self.stream.is_none() || !contains(data, b"data:") || data.starts_with(b"data: [DONE]") {
            return;
        }
        let now = Instant::now();
        let last = self.stream.as_ref().and_then(|stream| stream.last_event);
        if let (Some(last), Some(metrics)) = (last, self.metrics()) {
            metrics.token_gap(now.duration_since(last));
        }
        let started = self.started;
        let Some(stream) = &mut self.stream else { return };
        if last.is_none() {
            stream.first_token = Some(now.duration_since(started));
        }
        stream.last_event = Some(now);
        if metered {
            return;
        }
        if let Some(tokens) = cost::usage_field(data, &cost::COMPLETION_TOKENS) {
            stream.output_tokens = Some(tokens);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// A request being accounted: created with the request, routed to its location's account, and
/// attached to the response body. Its record lives from the start in the box that becomes the
/// response body's wrapper, so accounting costs one allocation. Dropped before a response exists
/// (the client left), it records a 499.
pub(crate) struct Accounting<B: Body + Metering + Default>(Option<Box<TrackedBody<B>>>);

impl<B: Body + Metering + Default> Accounting<B> {
    /// Starts the record when the runtime accounts requests (metrics or an access log are on),
    /// keeping the request headers the log formats read.
    pub(crate) fn begin<R>(
        books: &Arc<impl Books + 'static>,
        client: &ClientInfo,
        request: &Request<R>,
        request_id: &HeaderValue,
    ) -> Accounting<B> {
        let ledger = books.ledger();
        if !ledger.enabled {
            return Accounting(None);
        }
        let facts = ledger.access_logs.any().then(|| {
            let headers = request.headers();
            let keep = ledger.access_logs.keep_headers();
            let protocol = match request.version() {
                Version::HTTP_2 => "HTTP/2.0",
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_3 => "HTTP/3.0",
                _ => "HTTP/1.1",
            };
            Box::new(LoggedRequest {
                client_ip: client.peer.ip(),
                https: client.https,
                method: request.method().clone(),
                uri: request.uri().clone(),
                protocol,
                host: headers.get(header::HOST).cloned(),
                request_id: request_id.clone(),
                headers: keep.iter().filter_map(|name| Some((name.clone(), headers.get(name)?.clone()))).collect(),
            })
        });
        let record = Record {
            request: facts,
            status: 499,
            error_code: None,
            body_bytes: 0,
            started: Instant::now(),
            duration: Duration::ZERO,
            ended_at: SystemTime::UNIX_EPOCH,
            upstream: None,
            stream: None,
            end: BodyEnd::ClientClosed,
            key: None,
            reading: None,
            books: books.clone(),
            account: None,
            metrics_on: ledger.metrics_kept,
        };
        Accounting(Some(Box::new(TrackedBody {
            inner: B::default(),
            places: Vec::new(),
            record: Some(record),
            end: None,
        })))
    }

    /// Accounts the request to `account` (an index into `Ledger::accounts`: the routed location's, or
    /// the server's when no location matched).
    pub(crate) fn route(&mut self, account: usize) {
        if let Some(record) = self.0.as_mut().and_then(|tracked| tracked.record.as_mut()) {
            record.account = Some(account);
        }
    }

    /// Notes the API key the request was made with.
    pub(crate) fn key(&mut self, key: &Arc<ApiKey>) {
        if let Some(record) = self.0.as_mut().and_then(|tracked| tracked.record.as_mut()) {
            record.key = Some(key.clone());
        }
    }

    /// Attaches the record (and the concurrency places the request holds) to the response body, which
    /// finishes the record when it ends or is dropped. `upstream` is the exchange the body comes
    /// from, if any; `wrap` makes the tracked body into the caller's body type.
    pub(crate) fn attach(
        mut self,
        response: Response<B>,
        upstream: Option<UpstreamInfo>,
        places: Vec<ConnGuard>,
        wrap: impl FnOnce(Box<TrackedBody<B>>) -> B,
    ) -> Response<B> {
        let Some(mut tracked) = self.0.take() else {
            if places.is_empty() {
                return response;
            }
            return response.map(|inner| wrap(Box::new(TrackedBody { inner, places, record: None, end: None })));
        };
        if let Some(record) = &mut tracked.record {
            record.status = response.status().as_u16();
            record.error_code = response.extensions().get::<ErrorCode>().map(|code| code.0);
            record.upstream = upstream;
            if let (Some(upstream), Some(metrics)) = (record.upstream, record.metrics()) {
                metrics.gateway_added(upstream.head_at.elapsed());
            }
            if record.upstream.is_some_and(|upstream| upstream.event_stream) {
                record.stream = Some(StreamStats::default());
            }
        }
        tracked.places = places;
        response.map(|inner| {
            tracked.inner = inner;
            wrap(tracked)
        })
    }
}

impl<B: Body + Metering + Default> Drop for Accounting<B> {
    fn drop(&mut self) {
        if let Some(mut tracked) = self.0.take() {
            // The client left before a response existed; the body's drop finishes the record.
            tracked.end = Some(BodyEnd::ClientClosed);
        }
    }
}

/// A response body that counts its bytes and, when it ends or is dropped, releases the request's
/// concurrency places and finishes its record.
pub(crate) struct TrackedBody<B: Body + Metering> {
    inner: B,
    places: Vec<ConnGuard>,
    record: Option<Record>,
    end: Option<BodyEnd>,
}

impl<B: Body + Metering> TrackedBody<B> {
    /// The body being tracked.
    pub(crate) fn source(&self) -> &B {
        &self.inner
    }
}

impl<B: Body<Data = Bytes, Error = BoxError> + Metering + Unpin> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let (Some(record), Some(data)) = (&mut this.record, frame.data_ref()) {
                    if record.upstream.is_none() && record.status == 200 {
                        // A keep-alive stream's backend answers after its head went out.
                        record.answered_late(this.inner.upstream_info());
                    }
                    record.body_bytes += data.len() as u64;
                    record.observe_event(data, this.inner.meters_usage());
                }
            }
            Some(Err(error)) => {
                this.end = Some(if error.is::<StreamTimedOut>() { BodyEnd::Timeout } else { BodyEnd::Error });
            }
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

impl<B: Body + Metering> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        self.places.clear();
        if let Some(mut record) = self.record.take() {
            record.reading = self.inner.take_reading();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_reports_completion_tokens() {
        let chunk = br#"data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens": 42,"total_tokens":51}}"#;
        assert_eq!(cost::usage_field(chunk, &cost::COMPLETION_TOKENS), Some(42));
        assert_eq!(
            cost::usage_field(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}", &cost::COMPLETION_TOKENS),
            None
        );
    }
}
