//! What an HTTP/1.1 message head says about its body and its connection (RFC 9112 §6, §9; RFC 9110
//! §7.6.1), the same rules for a client's request (`server::http1`) and a backend's response
//! (`upstream::http1`): `Content-Length` and `Transfer-Encoding` and which of them frames the body,
//! the `Connection` header's tokens, keep-alive by version, and the strict line endings both
//! parsers require.

/// The tokens of a `Connection` header value (or any comma-separated list), trimmed, empty ones
/// skipped.
pub(crate) fn list_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|token| !token.is_empty())
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    list_tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// Whether every line of a head httparse parsed ends with CRLF, given where its header lines
/// start. httparse takes a bare LF as a line end, which RFC 9112 §2.2 allows a recipient to do;
/// both sides refuse it instead, since a peer that reads the same bytes another way is how requests
/// are smuggled. The line ends are exactly before each header line, the head's last two lines, and
/// any empty lines httparse skipped before the first: checking those costs a compare per header
/// (scanning every byte of request and response heads with memchr cost 500 instructions per
/// proxied request, callgrind).
pub(crate) fn lines_end_with_crlf(head: &[u8], header_starts: impl IntoIterator<Item = usize>) -> bool {
    let crlf_before = |at: usize| at >= 2 && head[at - 2..at] == *b"\r\n";
    let first_line = head.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(head.len());
    head[..first_line].chunks(2).all(|empty_line| empty_line == b"\r\n")
        && head.ends_with(b"\r\n\r\n")
        && header_starts.into_iter().all(crlf_before)
}

/// How a message's body is delimited, as its head declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Declared {
    /// Neither header: a request has no body, a response runs until the connection closes.
    Nothing,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why a head's framing cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// A `Content-Length` that is not a number, or several that differ: 400 (request), 502 (response).
    BadLength(&'static str),
    /// A `Transfer-Encoding` other than exactly `chunked` (`gzip, chunked` included: the gateway would
    /// have to name the coding to the other side): 501 (request), 502 (response).
    UnsupportedCoding,
}

impl FramingError {
    /// Why, in words.
    pub(crate) fn message(self) -> &'static str {
        match self {
            FramingError::BadLength(what) => what,
            FramingError::UnsupportedCoding => "unsupported Transfer-Encoding (only `chunked` is accepted)",
        }
    }
}

/// The framing and connection facts of one head, gathered header by header.
#[derive(Debug, Default)]
pub(crate) struct HeadFacts {
    content_length: Option<u64>,
    length_error: Option<&'static str>,
    /// `Transfer-Encoding` headers seen, and whether all of them together are exactly `chunked`.
    codings: u8,
    chunked_only: bool,
    /// `Connection: close`.
    pub(crate) close: bool,
    /// `Connection: keep-alive`.
    pub(crate) keep_alive: bool,
    /// `Connection: upgrade`.
    pub(crate) upgrade: bool,
}

impl HeadFacts {
    /// Notes a `Content-Length` value.
    pub(crate) fn content_length(&mut self, value: &[u8]) {
        match crate::wire::parse_content_length(value) {
            Ok(length) if self.content_length.is_some_and(|previous| previous != length) => {
                self.length_error.get_or_insert("conflicting Content-Length headers");
            }
            Ok(length) => self.content_length = Some(length),
            Err(what) => {
                self.length_error.get_or_insert(what);
            }
        }
    }

    /// Notes a `Transfer-Encoding` value.
    pub(crate) fn transfer_encoding(&mut self, value: &[u8]) {
        let mut codings = list_tokens(value);
        let only_chunked =
            codings.next().is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")) && codings.next().is_none();
        self.chunked_only = only_chunked && self.codings == 0;
        self.codings = self.codings.saturating_add(1);
    }

    /// Notes a `Connection` value; `other` gets each token that is not `close`, `keep-alive` or
    /// `upgrade` (a header the connection names as its own).
    pub(crate) fn connection(&mut self, value: &[u8], mut other: impl FnMut(&[u8])) {
        for token in list_tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                other(token);
            }
        }
    }

    /// Whether the head had a `Transfer-Encoding`.
    pub(crate) fn has_transfer_encoding(&self) -> bool {
        self.codings > 0
    }

    /// Whether the head had both `Transfer-Encoding` and `Content-Length`: framed by the coding
    /// (RFC 9112 §6.3). A server closes the connection after answering such a request, as it may be
    /// an attempt to smuggle a second request past a peer that reads the length.
    pub(crate) fn both_framings(&self) -> bool {
        self.codings > 0 && (self.content_length.is_some() || self.length_error.is_some())
    }

    /// How the body is delimited (RFC 9112 §6.3): a coding wins over a length, and is accepted only as
    /// exactly `chunked`; a broken length is an error unless a coding frames the body.
    pub(crate) fn declared(&self) -> Result<Declared, FramingError> {
        if self.codings > 0 {
            return match self.chunked_only {
                true => Ok(Declared::Chunked),
                false => Err(FramingError::UnsupportedCoding),
            };
        }
        if let Some(what) = self.length_error {
            return Err(FramingError::BadLength(what));
        }
        Ok(self.content_length.map_or(Declared::Nothing, Declared::Length))
    }

    /// Whether the connection may carry another message after this one: HTTP/1.1 unless `close`,
    /// HTTP/1.0 only with `keep-alive`; never after a message with a coding in HTTP/1.0 (RFC 9112
    /// §6.1: the coding's framing cannot be trusted there).
    pub(crate) fn persistent(&self, http11: bool) -> bool {
        let asked = if http11 { !self.close } else { self.keep_alive };
        asked && (http11 || self.codings == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head's framing headers, in order.
    type Headers<'a> = &'a [(&'a str, &'a str)];

    fn facts(headers: Headers) -> HeadFacts {
        let mut facts = HeadFacts::default();
        for (name, value) in headers {
            match *name {
                "content-length" => facts.content_length(value.as_bytes()),
                "transfer-encoding" => facts.transfer_encoding(value.as_bytes()),
                "connection" => facts.connection(value.as_bytes(), |_| {}),
                _ => unreachable!(),
            }
        }
        facts
    }

    #[test]
    fn framing_follows_rfc_9112_and_accepts_only_chunked() {
        let te = "transfer-encoding";
        let cl = "content-length";
        let rows: &[(Headers, Result<Declared, FramingError>)] = &[
            (&[], Ok(Declared::Nothing)),
            (&[(cl, "5")], Ok(Declared::Length(5))),
            (&[(cl, "5"), (cl, "5")], Ok(Declared::Length(5))),
            (&[(cl, "5, 5")], Ok(Declared::Length(5))),
            (&[(cl, "5"), (cl, "6")], Err(FramingError::BadLength("conflicting Content-Length headers"))),
            (&[(cl, "-1")], Err(FramingError::BadLength("bad Content-Length"))),
            (&[(te, "chunked")], Ok(Declared::Chunked)),
            (&[(te, "Chunked ")], Ok(Declared::Chunked)),
            (&[(te, "chunked"), (cl, "9")], Ok(Declared::Chunked)),
            (&[(te, "chunked"), (cl, "x")], Ok(Declared::Chunked)),
            (&[(te, "gzip, chunked")], Err(FramingError::UnsupportedCoding)),
            (&[(te, "gzip"), (te, "chunked")], Err(FramingError::UnsupportedCoding)),
            (&[(te, "chunked"), (te, "chunked")], Err(FramingError::UnsupportedCoding)),
            (&[(te, "chunked, chunked")], Err(FramingError::UnsupportedCoding)),
            (&[(te, "xchunked")], Err(FramingError::UnsupportedCoding)),
            (&[(te, "")], Err(FramingError::UnsupportedCoding)),
            (&[(te, "identity")], Err(FramingError::UnsupportedCoding)),
        ];
        for (headers, expected) in rows {
            assert_eq!(facts(headers).declared(), *expected, "{headers:?}");
        }
    }

    #[test]
    fn persistence_by_version_connection_and_framing() {
        let rows: &[(Headers, bool, bool)] = &[
            (&[], true, true),
            (&[], false, false),
            (&[("connection", "keep-alive")], false, true),
            (&[("connection", "x, Close")], true, false),
            (&[("transfer-encoding", "chunked")], true, true),
            (&[("connection", "keep-alive"), ("transfer-encoding", "chunked")], false, false),
        ];
        for (headers, http11, persistent) in rows {
            assert_eq!(facts(headers).persistent(*http11), *persistent, "{headers:?} http11={http11}");
        }
        assert!(facts(&[("transfer-encoding", "chunked"), ("content-length", "3")]).both_framings());
        assert!(!facts(&[("transfer-encoding", "chunked")]).both_framings());
    }

    #[test]
    fn connection_tokens_other_than_its_own_are_handed_on() {
        let mut facts = HeadFacts::default();
        let mut named = Vec::new();
        facts.connection(b" Upgrade, ,x-hop ,keep-alive", |token| named.push(token.to_vec()));
        assert!(facts.upgrade && facts.keep_alive && !facts.close);
        assert_eq!(named, [b"x-hop".to_vec()]);
        assert!(has_token(b"a, Upgrade", b"upgrade") && !has_token(b"upgrades", b"upgrade"));
    }

    #[test]
    fn bare_line_feeds_are_found_at_every_line_end() {
        // A head, and where its header lines start.
        let rows: &[(&[u8], &[usize], bool)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &[16], true),
            (b"GET / HTTP/1.1\r\n\r\n", &[], true),
            (b"\r\nGET / HTTP/1.1\r\n\r\n", &[], true),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", &[15], false),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", &[16], false),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\n", &[16], false),
            (b"GET / HTTP/1.1\n\n", &[], false),
            (b"\nGET / HTTP/1.1\r\n\r\n", &[], false),
            (b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\nC: 3\r\n\r\n", &[17, 23, 28], false),
        ];
        for (head, starts, crlf) in rows {
            assert_eq!(lines_end_with_crlf(head, starts.iter().copied()), *crlf, "{:?}", String::from_utf8_lossy(head));
        }
    }
}
