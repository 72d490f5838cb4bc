//! Request heads on the wire, both sides of the proxy: parsed as a client sends them (for
//! `server::http1`), written as the gateway sends them to a backend (for `upstream::http1`). What a
//! head says about its body and connection is `message`'s, the same rules for both.

use super::chunked::ChunkedDecoder;
use super::framing::Framing;
use super::message::{self, Declared, FramingError, HeadFacts};
use super::upgrade::{PendingUpgrade, UpgradedClient};
use super::{HeadLimits, HEADER_SLOTS};
use crate::client::{ClientBody, ClientRequest};
use crate::error::{error_response, ErrorFormat};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use std::mem::MaybeUninit;
use tokio::sync::oneshot;

/// A parsed request head and what it says about its body and the connection.
pub(crate) struct ParsedRequest {
    pub(crate) request: ClientRequest,
    pub(crate) inbound: Framing,
    pub(crate) keep_alive: bool,
    pub(crate) expects_continue: bool,
    pub(crate) upgrade: Option<oneshot::Sender<UpgradedClient>>,
}

/// A request head the connection cannot serve; answered, then the connection closes.
#[derive(Debug, PartialEq)]
pub(crate) enum HeadRejection {
    /// Malformed: 400.
    Bad(&'static str),
    /// Valid, but asks for what the gateway does not do (a transfer coding other than chunked): 501.
    NotImplemented(&'static str),
    /// The request line does not fit `max_head`: 414.
    UriTooLong,
    /// The head does not fit `max_head`, or has too many fields: 431.
    HeadTooLarge,
}

impl HeadRejection {
    /// The answer: OpenAI-shaped text, as the request was not understood well enough to know more.
    pub(crate) fn response(&self) -> Response<Bytes> {
        let (status, code, message) = match self {
            HeadRejection::Bad(what) => (StatusCode::BAD_REQUEST, "bad_request", *what),
            HeadRejection::NotImplemented(what) => (StatusCode::NOT_IMPLEMENTED, "not_implemented", *what),
            HeadRejection::UriTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long", "request line too long"),
            HeadRejection::HeadTooLarge => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "header_too_large", "request header too large")
            }
        };
        error_response(status, "invalid_request_error", code, None, message, ErrorFormat::Text)
    }
}

/// Where a header's name and value sit in the head.
pub(crate) type Spans = ((usize, usize), (usize, usize));

/// Parses a request head at the start of `buf` and removes it; `None` when it is not complete yet.
/// Header values and the target share the head's memory instead of being copied; `spans` is scratch
/// space the connection keeps (an array for the most headers allowed would be kilobytes to zero).
pub(crate) fn parse(
    buf: &mut BytesMut,
    spans: &mut Vec<Spans>,
    limits: HeadLimits,
) -> Result<Option<ParsedRequest>, HeadRejection> {
    // Uninitialized: zeroing the slots would cost more than parsing a small head.
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; HEADER_SLOTS];
    let slots = &mut slots[..limits.max_headers.clamp(1, HEADER_SLOTS)];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, buf, slots) {
        Ok(httparse::Status::Complete(length)) if length <= limits.max_head => length,
        Ok(httparse::Status::Complete(_)) => return Err(HeadRejection::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadRejection::HeadTooLarge),
        Err(_) => return Err(HeadRejection::Bad("malformed request head")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadRejection::Bad("malformed method"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where the target and each header sit in the head, so they can be slices of it once split off.
    let base = buf.as_ptr() as usize;
    let span = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        (start, start + part.len())
    };
    let target = span(parsed.path.unwrap_or_default().as_bytes());
    let count = parsed.headers.len();
    spans.clear();
    spans.extend(parsed.headers.iter().map(|field| (span(field.name.as_bytes()), span(field.value))));
    if !message::lines_end_with_crlf(&buf[..length], spans.iter().map(|((name_start, _), _)| *name_start)) {
        return Err(HeadRejection::Bad("bare LF in the request head (lines end with CRLF)"));
    }
    let head = buf.split_to(length).freeze();

    let uri =
        Uri::from_maybe_shared(head.slice(target.0..target.1)).map_err(|_| HeadRejection::Bad("malformed target"))?;
    // Room for the `X-Request-Id` the gateway adds: growing the map later reallocates it.
    let mut headers = HeaderMap::with_capacity(count + 1);
    let mut facts = HeadFacts::default();
    let mut expects_continue = false;
    let mut hosts = 0;
    for &((name_start, name_end), (value_start, value_end)) in spans.iter() {
        let name =
            HeaderName::from_bytes(&head[name_start..name_end]).map_err(|_| HeadRejection::Bad("malformed header"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| HeadRejection::Bad("malformed header value"))?;
        if name == header::CONTENT_LENGTH {
            facts.content_length(value.as_bytes());
        } else if name == header::TRANSFER_ENCODING {
            facts.transfer_encoding(value.as_bytes());
        } else if name == header::CONNECTION {
            facts.connection(value.as_bytes(), |_| {});
        } else if name == header::EXPECT {
            expects_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::HOST {
            hosts += 1;
        }
        headers.append(name, value);
    }
    // RFC 9112 §3.2, as nginx: an HTTP/1.1 request names its host, once.
    match hosts {
        0 if version == Version::HTTP_11 => return Err(HeadRejection::Bad("HTTP/1.1 request without Host header")),
        0 | 1 => {}
        _ => return Err(HeadRejection::Bad("duplicate Host header")),
    }
    // RFC 9112 §3.2.2: an absolute-form target names the host; the Host header is replaced by it.
    if let Some(authority) = uri.authority() {
        let host = match authority.port() {
            Some(port) => format!("{}:{port}", authority.host()),
            None => authority.host().to_owned(),
        };
        let host = HeaderValue::try_from(host).map_err(|_| HeadRejection::Bad("malformed target"))?;
        headers.insert(header::HOST, host);
    }
    // RFC 9112 §6.3: a request body is chunked or has a length; chunked wins over a length, which is
    // then not passed on; other codings are not implemented (501, as nginx).
    let inbound = match facts.declared() {
        Ok(Declared::Chunked) => {
            headers.remove(header::CONTENT_LENGTH);
            Framing::Chunked(ChunkedDecoder::default())
        }
        Ok(Declared::Length(length)) => Framing::declared(length),
        Ok(Declared::Nothing) => Framing::Done,
        Err(FramingError::UnsupportedCoding) => {
            return Err(HeadRejection::NotImplemented(FramingError::UnsupportedCoding.message()))
        }
        Err(error) => return Err(HeadRejection::Bad(error.message())),
    };
    let keep_alive = facts.persistent(version == Version::HTTP_11) && !facts.both_framings();
    let upgrade_asked = facts.upgrade;
    let upgrade = (version == Version::HTTP_11 && upgrade_asked && headers.contains_key(header::UPGRADE)).then(|| {
        let (sender, receiver) = oneshot::channel();
        (sender, PendingUpgrade::new(receiver))
    });
    let mut request = Box::new(Request::new(ClientBody::Empty));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let upgrade = upgrade.map(|(sender, pending)| {
        request.extensions_mut().insert(pending);
        sender
    });
    Ok(Some(ParsedRequest {
        request,
        inbound,
        keep_alive,
        expects_continue: expects_continue && version == Version::HTTP_11,
        upgrade,
    }))
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RequestFraming {
    /// No body.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`, for a body of unknown length.
    Chunked,
}

impl RequestFraming {
    /// A known length is declared (an empty body only for methods that carry one, as hyper does);
    /// anything else is chunked.
    pub(crate) fn for_request(method: &Method, body: &impl Body) -> RequestFraming {
        match body.size_hint().exact() {
            Some(0) if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) => RequestFraming::Empty,
            Some(length) => RequestFraming::Length(length),
            None => RequestFraming::Chunked,
        }
    }
}

/// Writes the request line and headers into `buf`: the request's own headers, less its framing
/// ones and any `forwarding` names, then `forwarding`, then the framing `framing` says.
pub(crate) fn write(
    buf: &mut BytesMut,
    head: &Request<ClientBody>,
    forwarding: &[(&'static HeaderName, HeaderValue)],
    framing: RequestFraming,
) {
    buf.reserve(512);
    buf.extend_from_slice(head.method().as_str().as_bytes());
    buf.extend_from_slice(b" ");
    buf.extend_from_slice(head.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let own = head.headers().iter().filter(|(name, _)| {
        *name != header::CONTENT_LENGTH
            && *name != header::TRANSFER_ENCODING
            && !forwarding.iter().any(|(added, _)| *added == *name)
    });
    for (name, value) in own.chain(forwarding.iter().map(|(name, value)| (*name, value))) {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Empty => {}
        RequestFraming::Length(length) => {
            buf.extend_from_slice(b"content-length: ");
            buf.extend_from_slice(length.to_string().as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    buf.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits { max_head: 1024, max_headers: 8 };

    fn parse_text(text: &str) -> Result<Option<ParsedRequest>, HeadRejection> {
        parse(&mut BytesMut::from(text), &mut Vec::new(), LIMITS)
    }

    #[test]
    fn reads_method_target_headers_and_framing() {
        let mut buf = BytesMut::from(
            "POST /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhelloGET",
        );
        let head = parse(&mut buf, &mut Vec::new(), LIMITS).unwrap().unwrap();
        assert_eq!(head.request.method(), Method::POST);
        assert_eq!(head.request.uri().path(), "/v1/chat");
        assert_eq!(head.request.uri().query(), Some("x=1"));
        assert_eq!(head.request.headers().get_all("x-a").iter().count(), 2);
        assert!(matches!(head.inbound, Framing::Length(5)));
        assert!(head.keep_alive && !head.expects_continue && head.upgrade.is_none());
        assert_eq!(&buf[..], b"helloGET", "the body and what follows stay in the buffer");
    }

    #[test]
    fn incomplete_heads_wait_and_broken_ones_are_refused() {
        assert!(parse_text("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert_eq!(
            parse_text("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").err(),
            Some(HeadRejection::Bad("conflicting Content-Length headers"))
        );
        assert!(matches!(
            parse_text("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
            Err(HeadRejection::Bad(_))
        ));
        assert!(matches!(parse_text("GET / HTTP/1.1\nHost: a\r\n\r\n"), Err(HeadRejection::Bad(_))), "bare LF");
        assert!(matches!(
            parse_text("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(HeadRejection::NotImplemented(_))
        ));
        assert!(matches!(parse_text("GET /\x01 HTTP/1.1\r\n\r\n"), Err(HeadRejection::Bad(_))));
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "x: 1\r\n".repeat(9));
        assert_eq!(parse_text(&many).err(), Some(HeadRejection::HeadTooLarge));
        let large = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(1100));
        assert_eq!(parse_text(&large).err(), Some(HeadRejection::HeadTooLarge));
        assert_eq!(
            parse_text("GET / HTTP/1.1\r\n\r\n").err(),
            Some(HeadRejection::Bad("HTTP/1.1 request without Host header"))
        );
        assert_eq!(
            parse_text("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").err(),
            Some(HeadRejection::Bad("duplicate Host header"))
        );
        assert!(parse_text("GET / HTTP/1.0\r\n\r\n").unwrap().is_some(), "HTTP/1.0 may leave the host out");
    }

    #[test]
    fn chunked_wins_over_a_length_and_closes_the_connection() {
        let head = parse_text("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(head.inbound, Framing::Chunked(_)));
        assert!(!head.request.headers().contains_key("content-length"));
        assert!(!head.keep_alive);
    }

    #[test]
    fn keep_alive_expect_and_upgrade_follow_the_head() {
        let head = |text: &str| parse_text(text).unwrap().unwrap();
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        let chunked_1_0 = "POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!head(chunked_1_0).keep_alive, "RFC 9112 §6.1: HTTP/1.0 with a coding closes");
        let absolute = head("GET http://models.example:8000/v1/models?x=1 HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(absolute.request.headers()["host"], "models.example:8000", "RFC 9112 §3.2.2");
        assert_eq!(absolute.request.uri().path_and_query().unwrap().as_str(), "/v1/models?x=1");
        assert!(
            head("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n").expects_continue
        );
        let upgrade = head("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(upgrade.upgrade.is_some() && upgrade.request.extensions().get::<PendingUpgrade>().is_some());
    }

    #[test]
    fn fuzz_request_heads_parse_or_are_refused_without_panic() {
        let seeds = crate::fuzzing::seeds(
            "request_head",
            &[
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
                b"GET http://m.test:8000/p?q HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                b"PUT / HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
            ],
        );
        arbtest::arbtest(|u| {
            let input = crate::fuzzing::mutated(u, &seeds)?;
            let limits = HeadLimits { max_head: u.int_in_range(16..=4096)?, max_headers: u.int_in_range(1..=64)? };
            let mut buf = BytesMut::from(&input[..]);
            match parse(&mut buf, &mut Vec::new(), limits) {
                Ok(Some(head)) => {
                    assert!(buf.len() < input.len(), "a parsed head is consumed");
                    let consumed = &input[..input.len() - buf.len()];
                    assert!(!crate::fuzzing::has_bare_lf(consumed), "{:?}", String::from_utf8_lossy(consumed));
                    let headers = head.request.headers();
                    if matches!(head.inbound, Framing::Chunked(_)) {
                        assert!(!headers.contains_key(header::CONTENT_LENGTH), "chunked drops the length");
                    }
                    if head.request.version() == Version::HTTP_11 {
                        assert_eq!(headers.get_all(header::HOST).iter().count(), 1, "one Host");
                    }
                }
                Ok(None) => assert_eq!(buf.len(), input.len(), "nothing is consumed before a whole head"),
                Err(rejection) => {
                    let status = rejection.response().status();
                    assert!(status.is_client_error() || status == StatusCode::NOT_IMPLEMENTED, "{status}");
                }
            }
            Ok(())
        });
    }
}
