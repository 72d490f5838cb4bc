//! The life of one request, as the named phases of ARCHITECTURE.md's data path, run in this order:
//!
//! 0. The request's `X-Request-Id` (kept or made), the client's address (from a trusted proxy's
//!    headers when `[http] trusted_proxies` says so), and its accounting record (`accounting`),
//!    finished once when the response ends.
//! 1. [`check_limits`]: request limits the connections' codecs leave to the pipeline (URI length;
//!    HTTP/2's target is not bounded by the head's size as HTTP/1.1's request line is).
//! 2. [`route`]: the virtual server by Host, then the location by normalized path.
//! 3. [`request_policies`]: the location's rate and concurrency limits, body size limit and request
//!    header edits.
//! 4. [`handle`]: the location's handler — proxy, models, static files, return or redirect — guarded
//!    against panics.
//! 5. [`finish`]: response policies: the server's and location's header edits, then compression
//!    (`compress::CompressPolicy::apply`), which sees the headers as configured.
//!
//! Each phase says when it runs and what it may change.

mod body;
mod keepalive;

pub(crate) use body::ResponseBody;

use crate::accounting::{Accounting, Metering};
use crate::ai;
use crate::client::ClientInfo;
use crate::client::{ClientBody, ClientRequest};
use crate::compress::RequestCodings;
use crate::cost;
use crate::error::ErrorFormat;
use crate::error::GatewayError;
use crate::keys::meter::{self, Estimate, Metered};
use crate::keys::ApiKey;
use crate::policy;
use crate::policy::connlimit::ConnGuard;
use crate::policy::headers::HeaderEdits;
use crate::proxy::{self, Proxied};
use crate::request_id;
use crate::route::{Handler, Location, VirtualServer};
use crate::runtime::{ListenerSpec, Runtime, RuntimeRef};
use crate::template::Vars;
use crate::upstream::{Claim, QueuePriority, Upstream};
use crate::uri;
use futures_util::FutureExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use memchr::memmem::Finder;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};
use tracing::Instrument;

/// Serves one request that arrived on `listener` under `runtime`. Its record (access log) is
/// finished when the response body ends, or here if the client leaves first.
pub(crate) async fn serve(
    handle: &Arc<RuntimeRef>,
    listener: &ListenerSpec,
    client: &ClientInfo,
    mut request: ClientRequest,
) -> Response<ResponseBody> {
    let runtime = &handle.runtime;
    let request_id = request_id::ensure(request.headers_mut());
    let client = &*runtime.trusted_proxies.client(client, request.headers());
    let mut account = Accounting::begin(handle, client, &request, &request_id);
    // Every log line of this request names its id (the span is free when debug logs are off).
    let span = tracing::debug_span!("request", id = ?request_id);
    let (mut response, places) =
        serve_identified(runtime, listener, client, request, &mut account).instrument(span).await;
    // The id goes back to the client.
    response.headers_mut().insert(&request_id::X_REQUEST_ID, request_id);
    let upstream = response.body().upstream_info();
    account.attach(response, upstream, places, ResponseBody::tracked)
}

/// Phases 1 to 5; returns the response and the concurrency places its request holds until it ends.
async fn serve_identified(
    runtime: &Runtime,
    listener: &ListenerSpec,
    client: &ClientInfo,
    request: ClientRequest,
    account: &mut Accounting<ResponseBody>,
) -> (Response<ResponseBody>, Vec<ConnGuard>) {
    let server = listener.hosts.select(host_of(&request));
    let routed = check_limits(runtime, &request).and_then(|()| route(server, &request));
    let location = match routed {
        Ok(location) => location,
        Err(error) => {
            account.route(server.account);
            let mut response = error.to_response(server.errors).map(ResponseBody::from);
            finish(&mut response, &server.response_headers);
            return (response, Vec::new());
        }
    };
    account.route(location.account);
    let mut request = request;
    let codings = location.compress.as_ref().map(|_| RequestCodings::of(&request));
    let (mut response, places, caller) = match request_policies(location, client, &mut request).await {
        Ok((places, caller)) => {
            if let Some(key) = &caller {
                account.key(key);
            }
            // Where the key's rate stands once this request counted, for OpenAI's request headers.
            let rate_headers = caller
                .as_ref()
                .filter(|key| !key.limits.is_empty())
                .zip(policy::api_key(request.headers()))
                .map(|(key, secret)| key.rate_headers(secret));
            let mut response = handle(location, server, client, request, caller.as_ref()).await;
            // Only a key with a rate has them: the plain path skips the map's reservation.
            if let Some(rate_headers) = rate_headers {
                response.headers_mut().extend(rate_headers);
            }
            (response, places, caller)
        }
        Err(error) => (error.to_response(location.errors).map(ResponseBody::from), Vec::new(), None),
    };
    // OpenAI's token headers on every answer to a key with budgets (its request headers are above).
    if let Some(budgets) = caller.as_ref().and_then(|key| key.budgets.as_ref()) {
        budgets.headers(response.headers_mut());
    }
    finish(&mut response, &location.response_headers);
    let response = match (&location.compress, codings) {
        (Some(policy), Some(codings)) => policy.apply(&codings, response, ResponseBody::compressed),
        _ => response,
    };
    (response, places)
}

/// Phase 1, before routing: rejects a request target longer than `max_uri_size` with 414. Changes nothing.
fn check_limits(runtime: &Runtime, request: &Request<ClientBody>) -> Result<(), GatewayError> {
    let uri_len = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len as u64 > runtime.http.max_uri_size.0 {
        return Err(GatewayError::UriTooLong);
    }
    Ok(())
}

/// Phase 2: picks the location for the request's normalized path. A malformed path answers 400 and
/// no match answers 404, in the server's error format. Changes nothing.
fn route<'a>(server: &'a VirtualServer, request: &Request<ClientBody>) -> Result<&'a Location, GatewayError> {
    let Some(path) = uri::normalize_path(request.uri().path()) else {
        return Err(GatewayError::BadRequest("malformed request path".into()));
    };
    server.locations.find(&path).map(Arc::as_ref).ok_or(GatewayError::NoRoute)
}

/// Phase 3, after routing: the location's request policies, in this order: the API key (`auth =
/// "api_key"`: 401 or 403), rate limits, concurrency limits (the location's, then the key's), the
/// body size limit on the declared `Content-Length`, then `proxy_set_header`. A limit may reject (in
/// the location's error format: 429 and `Retry-After`, or 413 before any byte of the body is read)
/// or hold the request for its delay; the returned places are held until the response ends. Changes
/// only the request headers `proxy_set_header` names. Returns the places and the request's key.
async fn request_policies(
    location: &Location,
    client: &ClientInfo,
    request: &mut Request<ClientBody>,
) -> Result<(Vec<ConnGuard>, Option<Arc<ApiKey>>), GatewayError> {
    let caller = match &location.keys {
        Some(keys) => Some(keys.authenticate(request.headers(), SystemTime::now)?),
        None => None,
    };
    policy::limit_requests(&location.limits, client, request).await?;
    let mut places = policy::hold_places(&location.conn_limits, client, request).await?;
    if let Some(key) = &caller {
        policy::limit_requests(&key.limits, client, request).await?;
        places.extend(policy::hold_places(&key.conn_limits, client, request).await?);
    }
    if request.body().declared_length().is_some_and(|length| length > location.body.max) {
        return Err(GatewayError::BodyTooLarge(location.body.max));
    }
    location.request_headers.apply(request.headers_mut());
    Ok((places, caller))
}

/// Phase 4: runs the location's handler. It owns the request from here; a proxied response's body is
/// still streaming when this returns. A panic inside is logged and answered 500; the process lives on.
async fn handle(
    location: &Location,
    server: &VirtualServer,
    client: &ClientInfo,
    request: ClientRequest,
    key: Option<&Arc<ApiKey>>,
) -> Response<ResponseBody> {
    let priority = key.map(|key| QueuePriority { level: key.priority, header_believed: key.client_priority });
    let claim = Claim { priority, tokens: 0 };
    // Boxed: handler futures are kilobytes. Inline, they made the request future hyper allocates and
    // moves for every request 12 KB instead of 2 (measured: 5 % of small-request throughput).
    let work = crate::boxed::pinned(|| async {
        match &location.handler {
            Handler::Proxy(_) | Handler::Models(_) if reads_first(location, &request) => {
                read_first(location, client, request, key, claim).await
            }
            Handler::Proxy(target) => {
                let upstream = target.choose(&request, &client.ip);
                let inference = location.inference.covers(request.method(), request.uri().path());
                proxy::forward(request, client, upstream, location.body, inference, claim).await.map(proxied)
            }
            Handler::Models(router) => match router.listing(&request) {
                Some(listing) => Ok(listing.map(ResponseBody::from)),
                None => router.forward(request, client, location.inference, claim).await.map(proxied),
            },
            Handler::Return { status, body, content_type } => {
                let mut response = Response::new(ResponseBody::full(body.clone()));
                *response.status_mut() = *status;
                response.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
                Ok(response)
            }
            Handler::Redirect { status, url } => redirect(*status, url, server, client, &request),
            Handler::Static(files) => files.serve(&request).await.map(|response| response.map(ResponseBody::file)),
            Handler::Page(page) => Ok(page.serve(request.method()).map(ResponseBody::from)),
        }
    });
    answer(work, location.errors).await
}

/// Whether a request to a proxy or models location is read whole before it is forwarded: a POST,
/// where the location reads them (for its API keys, its image checks, a model route or a hash by
/// image).
fn reads_first(location: &Location, request: &ClientRequest) -> bool {
    request.method() == Method::POST && location.reads_posts
}

/// Phase 4 for a POST that `reads_first`: the body is read first (up to `client_max_body_size`), its
/// images checked against the location's limits (400 or 413 naming the image), the model it names
/// checked against the key (403), the tokens it may cost reserved against the key's budgets (429 with
/// `Retry-After`), then the request forwarded whole; a keyed request's response is metered for the
/// key's usage and settles the reservation when it ends (`keys::meter`). A body that names no model
/// passes (a file upload) unless the key may name only some models or the location routes by model.
async fn read_first(
    location: &Location,
    client: &ClientInfo,
    request: ClientRequest,
    key: Option<&Arc<ApiKey>>,
    mut claim: Claim,
) -> Result<Response<ResponseBody>, GatewayError> {
    let (head, mut body) = ai::read_body(request, location.body).await?;
    // A chat completion is read once, for its images, its model and its cost; without a key, only a
    // body that may hold an image is read (one with a backslash may spell `image_url` escaped).
    let images =
        location.images.as_ref().filter(|_| memchr::memchr(b'\\', &body).is_some() || IMAGE_URL.find(&body).is_some());
    // A stream that may wait is read too (it is answered with keep-alive comments meanwhile), and a
    // request whose tokens admission holds.
    let parse = key.is_some() || images.is_some() || location.sse_keepalive.is_some() || location.weighs_tokens;
    let mut reading = match parse.then(|| cost::read_chat(&body, &location.image_costs)) {
        Some(Ok(reading)) => Some(reading),
        // A body with an image that cannot be read whole is refused, never passed on unchecked.
        Some(Err(error)) if images.is_some() && IMAGE_URL.find(&body).is_some() => {
            return Err(GatewayError::BadRequest(error))
        }
        Some(Err(_)) | None => None,
    };
    if let (Some(limits), Some(read)) = (images, &reading) {
        limits.check(&read.images, read.model.as_deref())?;
        // Remote images fetched are checked as the images they are.
        if let Some(inlined) = limits.inline_remote(&body, &read.images).await? {
            body = inlined;
            let fetched = cost::read_chat(&body, &location.image_costs).map_err(GatewayError::BadRequest)?;
            limits.check(&fetched.images, fetched.model.as_deref())?;
            reading = Some(fetched);
        }
    }
    if let (Some(limits), Some(read)) = (images, &reading) {
        // Scaled down, the images cost what the model will see of them.
        if let Some(scaled) = limits.scale_down(&body, &read.images).await? {
            body = scaled;
            reading = cost::read_chat(&body, &location.image_costs).ok();
        }
    }
    let (named, chat) = reading.map_or((None, None), |reading| (reading.model, Some(reading.cost)));
    claim.tokens = chat.as_ref().map_or(0, cost::PromptCost::held_tokens);
    let routes_by_model = matches!(location.handler, Handler::Models(_));
    let keep_alive = location.sse_keepalive.filter(|_| chat.as_ref().is_some_and(|chat| chat.stream));
    let Some((key, store)) = key.zip(location.keys.as_ref()) else {
        let model = match routes_by_model {
            true => named.map_or_else(|| ai::model_of(&body), Ok)?,
            false => String::new(),
        };
        return ReadRequest::new(location, head, body, &model, client, claim)?.answer(keep_alive).await;
    };
    let model = match named.map_or_else(|| ai::model_of(&body), Ok) {
        Ok(model) => model,
        Err(_) if !key.limits_models() && !routes_by_model => String::new(),
        Err(error) => return Err(error),
    };
    ai::check_model(Some(key), &model)?;
    let estimate = Estimate::of(&body, chat.as_ref());
    let reservation = match &key.budgets {
        Some(budgets) => Some(budgets.reserve_for(&estimate).await?),
        None => None,
    };
    // A stream is metered on the backend's own usage: asked for when the client did not ask.
    let asked = estimate.unasked_stream.then(|| meter::asking_for_usage(&body)).flatten();
    let strip_usage = asked.is_some();
    if let Some(asked) = asked {
        body = asked;
    }
    let response = ReadRequest::new(location, head, body, &model, client, claim)?.answer(keep_alive).await?;
    let label = store.model_label(&model);
    Ok(response.map(|body| {
        let metered = Metered::new(body, model, label, estimate).settling(reservation).stripping_usage(strip_usage);
        ResponseBody::metered(metered)
    }))
}

/// `image_url`, the key of an image part, found before a body is parsed for its images.
static IMAGE_URL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"image_url"));

/// A request whose body was read, with the upstream it goes to, owned: so that a keep-alive stream
/// may finish its forwarding.
struct ReadRequest {
    head: ClientRequest,
    body: bytes::Bytes,
    client: ClientInfo,
    upstream: Arc<Upstream>,
    inference: bool,
    claim: Claim,
}

impl ReadRequest {
    /// `head` and `body` (naming `model`, for a models location), for the location's upstream.
    fn new(
        location: &Location,
        head: ClientRequest,
        body: bytes::Bytes,
        model: &str,
        client: &ClientInfo,
        claim: Claim,
    ) -> Result<ReadRequest, GatewayError> {
        let (upstream, inference) = match &location.handler {
            Handler::Models(router) => router.upstream(model, head.method(), location.inference)?,
            Handler::Proxy(target) => {
                (target.choose(&head, &client.ip).clone(), location.inference.covers(head.method(), head.uri().path()))
            }
            _ => return Err(GatewayError::Internal),
        };
        Ok(ReadRequest { head, body, client: client.clone(), upstream, inference, claim })
    }

    async fn forward(self) -> Result<Response<Proxied>, GatewayError> {
        proxy::forward_buffered(self.head, self.body, &self.client, &self.upstream, self.inference, self.claim).await
    }

    /// The model's response; for a stream with `keep_alive`, a keep-alive stream when the model is
    /// slow to answer (`keepalive`).
    async fn answer(self, keep_alive: Option<Duration>) -> Result<Response<ResponseBody>, GatewayError> {
        match keep_alive {
            // Boxed only here, where a body may have to finish it.
            Some(interval) => keepalive::answer_streamed(Box::pin(self.forward()), interval).await,
            None => self.forward().await.map(proxied),
        }
    }
}

/// A proxied response with its body as the pipeline serves it.
fn proxied(response: Response<Proxied>) -> Response<ResponseBody> {
    response.map(|body| body.map_or(ResponseBody::Empty, |inner| ResponseBody::Upstream { inner }))
}

/// Turns a handler's outcome into a response: errors in the location's format, and a panic into a
/// logged 500 instead of a dropped connection.
async fn answer(
    work: impl Future<Output = Result<Response<ResponseBody>, GatewayError>>,
    errors: ErrorFormat,
) -> Response<ResponseBody> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            tracing::warn!(%error, "request failed");
            error.to_response(errors).map(ResponseBody::from)
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("?");
            tracing::error!(panic = message, "request handler panicked");
            GatewayError::Internal.to_response(errors).map(ResponseBody::from)
        }
    }
}

fn redirect(
    status: StatusCode,
    url: &crate::template::Template,
    server: &VirtualServer,
    client: &ClientInfo,
    request: &Request<ClientBody>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let host = host_of(request).map(uri::strip_port).unwrap_or(&server.primary_name).to_ascii_lowercase();
    let uri = request.uri();
    let vars = Vars {
        scheme: if client.https { "https" } else { "http" },
        host: &host,
        server_name: if server.primary_name.is_empty() { &host } else { &server.primary_name },
        request_uri: uri.path_and_query().map_or("/", |pq| pq.as_str()),
        uri: uri.path(),
        args: uri.query().unwrap_or(""),
    };
    let location = HeaderValue::try_from(url.render(&vars))
        .map_err(|_| GatewayError::BadRequest("redirect target is not a valid header value".into()))?;
    let mut response = Response::new(ResponseBody::Empty);
    *response.status_mut() = status;
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// Phase 5, last: the response header edits (`proxy_hide_header`, then `add_header`) on every
/// response, errors included (nginx's `always`).
fn finish(response: &mut Response<ResponseBody>, edits: &HeaderEdits) {
    edits.apply(response.headers_mut());
}

/// The Host header, or the authority of an HTTP/2 request.
fn host_of<B>(request: &Request<B>) -> Option<&str> {
    request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| request.uri().host())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_and_the_task_lives_on() {
        let work = async { panic!("bug in a handler") };
        let response = answer(work, ErrorFormat::Json).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let fine = answer(async { Err(GatewayError::ReadTimeout) }, ErrorFormat::Text).await;
        assert_eq!(fine.status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
