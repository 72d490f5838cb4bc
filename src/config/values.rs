//! Typed forms of config values that are more than strings: how requests are balanced and hashed,
//! what a rate-limit zone keys on, rates, networks and content codings. Parsed here, where both
//! validation (with the value's place in the file) and the runtime that compiles them read them,
//! so no module above config is called to understand a config.

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;
use std::time::SystemTime;

/// An upstream server's `addr`: `host:port` or `http://host:port` in cleartext, `https://host[:port]`
/// (port 443 unless given) over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerAddr {
    /// `host:port`.
    pub(crate) authority: String,
    /// Reached over TLS.
    pub(crate) tls: bool,
}

impl ServerAddr {
    /// Parses the forms above; `None` for anything else (a path, a port of 0).
    pub(crate) fn parse(text: &str) -> Option<ServerAddr> {
        let (rest, tls) = match text.split_once("://") {
            Some(("https", rest)) => (rest, true),
            Some(("http", rest)) => (rest, false),
            Some(_) => return None,
            None => (text, false),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => (host, port.parse::<u16>().ok().filter(|&p| p != 0)?),
            None if tls && !rest.is_empty() => (rest, 443),
            _ => return None,
        };
        (!host.contains('/')).then(|| ServerAddr { authority: format!("{host}:{port}"), tls })
    }

    /// The host, without its port.
    pub(crate) fn host(&self) -> &str {
        self.authority.rsplit_once(':').map_or(&self.authority, |(host, _)| host)
    }
}

/// `balance = "round_robin" | "least_inflight"` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Balance {
    /// In turn (nginx's default).
    #[default]
    RoundRobin,
    /// Power of two choices over in-flight load, then latency.
    LeastInflight,
    /// Consistent hashing of `hash_key` with bounded load.
    Hash,
}

/// What `hash` balancing keys on: `hash_key = "client_ip" | "header:NAME" | "cookie:NAME" | "image"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HashKey {
    /// The client's address.
    ClientIp,
    /// A chat request's first image (else the start of its messages), so that questions about one
    /// image reach the replica that has it cached.
    Image,
    /// A request header (a session or API key).
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
}

impl HashKey {
    /// Parses the config syntax.
    pub(crate) fn parse(text: &str) -> Option<HashKey> {
        match text.split_once(':') {
            None if text == "client_ip" => Some(HashKey::ClientIp),
            None if text == "image" => Some(HashKey::Image),
            Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes()).ok().map(HashKey::Header),
            Some(("cookie", name)) if !name.trim().is_empty() => Some(HashKey::Cookie(name.trim().to_string())),
            _ => None,
        }
    }
}

/// What a zone counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ZoneKey {
    /// The client's IP address (the socket peer).
    ClientIp,
    /// A request header's value; requests without it are not limited.
    Header(HeaderName),
    /// The client's API key: the token of `Authorization: Bearer TOKEN`, else `X-API-Key`; requests
    /// without one are not limited.
    ApiKey,
}

impl ZoneKey {
    /// Parses a zone's `key`: `client_ip`, `api_key` or `header:NAME`.
    pub(crate) fn parse(text: &str) -> Option<ZoneKey> {
        match text.split_once(':') {
            None if text == "client_ip" => Some(ZoneKey::ClientIp),
            None if text == "api_key" => Some(ZoneKey::ApiKey),
            Some(("header", name)) => http::HeaderName::from_bytes(name.trim().as_bytes()).ok().map(ZoneKey::Header),
            _ => None,
        }
    }
}

/// Parses a SHA-256 digest written as 64 hexadecimal digits (either case).
pub(crate) fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(text.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

/// Parses a moment written in RFC 3339 (`2027-01-01T00:00:00Z`, or with an offset).
pub(crate) fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim()).ok()
}

/// Parses nginx's rate syntax, `"10r/s"` or `"600r/m"`, into milli-requests per second.
pub(crate) fn parse_rate(text: &str) -> Option<u64> {
    let (count, unit) = text.trim().split_once("r/")?;
    let count: u64 = count.trim().parse().ok()?;
    let per_second_milli = match unit.trim() {
        "s" => count.checked_mul(1000)?,
        "m" => count.checked_mul(1000)? / 60,
        _ => return None,
    };
    (per_second_milli > 0).then_some(per_second_milli)
}

/// Parses a `trusted_proxies` entry: a CIDR (`10.0.0.0/8`) or a single address.
pub(crate) fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>().ok().or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// A content coding infergate can produce (compression) or find beside a file (precompressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `zstd`: the fastest to compress and decompress at a ratio like brotli's.
    Zstd,
    /// `br`: the best ratio for text, slower to compress.
    Br,
    /// `gzip`: what every client accepts.
    Gzip,
}

impl Encoding {
    /// Every coding, in the order of `Encoding`'s discriminants.
    pub(crate) const ALL: [Encoding; 3] = [Encoding::Zstd, Encoding::Br, Encoding::Gzip];

    /// The token in `Accept-Encoding` and `Content-Encoding`.
    pub(crate) fn token(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }

    /// The coding named `token` (config spelling), if known.
    pub(crate) fn parse(token: &str) -> Option<Encoding> {
        Encoding::ALL.into_iter().find(|e| e.token() == token)
    }

    /// The file name suffix of a precompressed sibling (`app.js.br`).
    pub(crate) fn file_suffix(self) -> &'static str {
        match self {
            Encoding::Zstd => ".zst",
            Encoding::Br => ".br",
            Encoding::Gzip => ".gz",
        }
    }

    /// As a header value.
    pub(crate) fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_are_host_port_or_urls() {
        let addr = |text| ServerAddr::parse(text).map(|a| (a.authority, a.tls));
        assert_eq!(addr("127.0.0.1:8080"), Some(("127.0.0.1:8080".into(), false)));
        assert_eq!(addr("http://model:8000"), Some(("model:8000".into(), false)));
        assert_eq!(addr("https://api.openai.com"), Some(("api.openai.com:443".into(), true)));
        assert_eq!(addr("https://api.openai.com/"), Some(("api.openai.com:443".into(), true)));
        assert_eq!(addr("https://10.0.0.5:8443"), Some(("10.0.0.5:8443".into(), true)));
        assert_eq!(addr("[::1]:8080"), Some(("[::1]:8080".into(), false)));
        for bad in ["model", "http://model", "ftp://x:1", "h:0", "https://x/v1", ":80", "h:port"] {
            assert_eq!(addr(bad), None, "{bad}");
        }
        assert_eq!(ServerAddr::parse("https://api.openai.com").unwrap().host(), "api.openai.com");
    }

    #[test]
    fn rates_parse_like_nginx() {
        assert_eq!(parse_rate("10r/s"), Some(10_000));
        assert_eq!(parse_rate("600r/m"), Some(10_000));
        assert_eq!(parse_rate("1r/m"), Some(16));
        assert_eq!(parse_rate("10 r/h"), None);
        assert_eq!(parse_rate("0r/s"), None);
    }

    #[test]
    fn digests_are_64_hex_digits() {
        let digest = parse_sha256(&"aB".repeat(32)).unwrap();
        assert_eq!(digest, [0xab; 32]);
        assert!(parse_sha256(&"a".repeat(63)).is_none());
        assert!(parse_sha256(&"g".repeat(64)).is_none());
    }

    #[test]
    fn times_are_rfc_3339() {
        let new_year = parse_time("2027-01-01T00:00:00Z").unwrap();
        assert_eq!(new_year.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 1_798_761_600);
        assert!(parse_time("next week").is_none());
    }

    #[test]
    fn networks_parse_as_cidrs_or_single_addresses() {
        assert_eq!(parse_net("10.0.0.0/8"), "10.0.0.0/8".parse().ok());
        assert_eq!(parse_net(" 127.0.0.1 "), "127.0.0.1/32".parse().ok());
        assert!(parse_net("10.0.0.0/33").is_none());
    }
}
