//! Response compression (nginx's `gzip` module, with brotli and zstd too), a response policy of the
//! pipeline's last phase: which responses qualify, which coding the client gets, and the streaming
//! encoder. Event streams, already-encoded bodies, `no-transform`, ranges and HEAD are never touched.

mod body;
mod codec;
mod negotiate;

pub(crate) use body::CompressedBody;
pub(crate) use codec::Levels;
pub(crate) use negotiate::negotiate;

use crate::config::Encoding;
use crate::wire::message::has_token;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body::Body;

/// A location's compression settings, compiled from `compress = { ... }`.
#[derive(Debug, Clone)]
pub(crate) struct CompressPolicy {
    /// Codings offered, the server's preference first.
    pub(crate) encodings: Vec<Encoding>,
    /// Media types compressed (`type/subtype`, lowercase).
    pub(crate) types: Vec<String>,
    /// Bodies declaring a shorter `Content-Length` are sent as they are.
    pub(crate) min_length: u64,
    /// Levels per coding.
    pub(crate) levels: Levels,
}

/// What the response policy needs to remember of the request, taken before the handler owns it.
pub(crate) struct RequestCodings {
    /// The client's `Accept-Encoding`.
    accept: Option<HeaderValue>,
    head: bool,
}

impl RequestCodings {
    /// Remembers what compression needs of a request.
    pub(crate) fn of<B>(request: &http::Request<B>) -> RequestCodings {
        RequestCodings {
            accept: request.headers().get(header::ACCEPT_ENCODING).cloned(),
            head: request.method() == Method::HEAD,
        }
    }

    /// The client's `Accept-Encoding`.
    pub(crate) fn accept(&self) -> Option<&HeaderValue> {
        self.accept.as_ref()
    }
}

impl CompressPolicy {
    /// Compresses `response` when it qualifies and the client accepts an offered coding; `wrap` makes
    /// the compressed body into the caller's body type. A response of a compressible type gets
    /// `Vary: Accept-Encoding` either way, so caches keep the variants apart.
    pub(crate) fn apply<B: Body>(
        &self,
        request: &RequestCodings,
        mut response: Response<B>,
        wrap: impl FnOnce(CompressedBody<B>) -> B,
    ) -> Response<B> {
        if request.head || !self.qualifies(&response) {
            return response;
        }
        add_vary(response.headers_mut());
        let Some(encoding) = negotiate(request.accept(), &self.encodings) else {
            return response;
        };
        let (mut parts, body) = response.into_parts();
        let body = wrap(CompressedBody::new(body, encoding, self.levels));
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::ACCEPT_RANGES);
        parts.headers.insert(header::CONTENT_ENCODING, encoding.header_value());
        // The bytes differ from the uncompressed representation's: a strong validator becomes weak.
        if let Some(etag) = parts.headers.get(header::ETAG).filter(|e| !e.as_bytes().starts_with(b"W/")) {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(weak) = HeaderValue::from_bytes(&weak) {
                parts.headers.insert(header::ETAG, weak);
            }
        }
        Response::from_parts(parts, body)
    }

    /// nginx's rules: statuses 200, 403 and 404; a listed type other than an event stream; no
    /// `Content-Encoding`, `Content-Range` or `Cache-Control: no-transform`; not declared shorter than
    /// `min_length`; not empty.
    fn qualifies<B: Body>(&self, response: &Response<B>) -> bool {
        let headers = response.headers();
        if !matches!(response.status(), StatusCode::OK | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND)
            || response.body().is_end_stream()
            || headers.contains_key(header::CONTENT_ENCODING)
            || headers.contains_key(header::CONTENT_RANGE)
        {
            return false;
        }
        // Compared in place, case-insensitively: nothing is allocated per response.
        let no_transform =
            headers.get_all(header::CACHE_CONTROL).iter().any(|v| has_token(v.as_bytes(), b"no-transform"));
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim());
        !no_transform
            && declared.is_none_or(|length| length >= self.min_length)
            && media_type.is_some_and(|t| {
                !t.eq_ignore_ascii_case("text/event-stream")
                    && self.types.iter().any(|listed| listed.eq_ignore_ascii_case(t))
            })
    }
}

/// Adds `Accept-Encoding` to `Vary` unless it is there.
pub(crate) fn add_vary(headers: &mut http::HeaderMap) {
    let present = headers
        .get_all(header::VARY)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"accept-encoding") || has_token(v.as_bytes(), b"*"));
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}
