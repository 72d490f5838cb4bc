//! The `proxy` handler: forwards one request to a server of its upstream over a pooled keep-alive
//! connection and streams the answer back. Dropping the returned future or the response body (the
//! client left) drops the backend request, which closes its connection at once.

mod body;
mod headers;
mod websocket;

pub use body::{ReadTimedOut, RequestBody, UpstreamBody};

use crate::body::ResponseBody;
use crate::error::GatewayError;
use crate::upstream::{ConnectError, SendTimedOut, Upstream};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;

/// Who sent the request, as the forwarding headers need it.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The client's socket address.
    pub peer: SocketAddr,
    /// Whether the client connection is TLS.
    pub https: bool,
}

/// Forwards `request` to `upstream` and returns the backend's response, its body still streaming.
pub async fn forward(
    mut request: Request<Incoming>,
    client: ClientInfo,
    upstream: &Upstream,
) -> Result<Response<ResponseBody>, GatewayError> {
    let upgrade = websocket::is_upgrade_request(&request);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let server = upstream.pick();

    let (mut parts, body) = request.into_parts();
    let host = parts
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    headers::to_upstream(&mut parts.headers, host, client.peer.ip(), client.https, upgrade);
    parts.uri = upstream_uri(&server.authority, &parts.uri)?;
    parts.version = Version::HTTP_11;
    let (body, sent) = RequestBody::new(body);

    let read_timeout = upstream.timeouts.read.0;
    let mut response =
        await_head(upstream.pool().request(Request::from_parts(parts, body)), sent, read_timeout).await?;

    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (switched, client_upgrade) {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(websocket::tunnel(client_upgrade, upstream_upgrade, read_timeout));
    }
    let (mut parts, body) = response.into_parts();
    headers::to_client(&mut parts.headers, switched);
    let body = if switched {
        ResponseBody::Empty
    } else {
        ResponseBody::Upstream { inner: UpstreamBody::new(body, read_timeout) }
    };
    Ok(Response::from_parts(parts, body))
}

/// `http://SERVER/path?query` for the backend.
fn upstream_uri(authority: &Authority, client_uri: &Uri) -> Result<Uri, GatewayError> {
    let path = client_uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| GatewayError::BadRequest(e.to_string()))
}

/// Waits for the response head. The read timeout starts once the request body has been handed to the
/// backend (`sent` completes), as nginx arms `proxy_read_timeout` after the request is sent.
async fn await_head(
    response: hyper_util::client::legacy::ResponseFuture,
    sent: Option<oneshot::Receiver<()>>,
    read_timeout: Duration,
) -> Result<Response<Incoming>, GatewayError> {
    let deadline = async {
        if let Some(sent) = sent {
            let _ = sent.await;
        }
        tokio::time::sleep(read_timeout).await;
    };
    tokio::select! {
        biased;
        result = response => result.map_err(|e| classify(&e)),
        () = deadline => Err(GatewayError::ReadTimeout),
    }
}

/// Maps a client error to the answer nginx users expect: refused 502, connect or send timeout 504.
fn classify(error: &hyper_util::client::legacy::Error) -> GatewayError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(connect) = current.downcast_ref::<ConnectError>() {
            return match connect {
                ConnectError::TimedOut(addr) => GatewayError::ConnectTimeout(addr.clone()),
                other => GatewayError::UpstreamUnreachable(other.to_string()),
            };
        }
        if current.is::<SendTimedOut>() {
            return GatewayError::SendTimeout;
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.is::<SendTimedOut>()) {
                return GatewayError::SendTimeout;
            }
        }
        source = current.source();
    }
    GatewayError::BadGateway(error_chain(error))
}

/// "outer: inner: innermost", for messages that say what actually happened.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
