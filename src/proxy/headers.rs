//! Header rewriting between client and backend, nginx's `proxy_set_header` defaults of the seed done
//! right: hop-by-hop headers (RFC 9110 §7.6.1, and any named in `Connection`) never cross, the
//! forwarding headers tell the backend who asked, and backend identity headers stay private.

use crate::wire::message::list_tokens;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const HOP_BY_HOP_COUNT: usize = 7;

/// Headers that describe one connection, not the message; never forwarded.
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Backend response headers never passed to clients, as nginx: the backend's identity (`Server`;
/// `X-Powered-By` leaks the stack) and its `Date` (the gateway writes its own). The upstream
/// connection drops them as it parses the head.
pub(super) static HIDDEN_RESPONSE: [&str; 3] = ["server", "x-powered-by", "date"];

static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes hop-by-hop headers and those the `Connection` header names. With `keep_upgrade`, the
/// `Connection: upgrade` and `Upgrade` pair survives (a WebSocket handshake must reach the other side).
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds the few present (most messages carry none, or `Connection`
    // alone): removing all seven by name cost more than the rest of the header rewrite.
    let mut present = [false; HOP_BY_HOP_COUNT];
    for name in headers.keys() {
        if let Some(index) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[index] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| list_tokens(v.as_bytes()))
        .filter(|name| !HOP_BY_HOP.iter().any(|hop| hop.as_str().as_bytes().eq_ignore_ascii_case(name)))
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect();
    for name in named {
        headers.remove(&name);
    }
    let upgrade = keep_upgrade.then(|| headers.remove(header::UPGRADE)).flatten();
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, present)| *present) {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// `Host`, as a forwarding header: what a server reached over TLS is sent instead of the client's.
pub(super) static HOST: HeaderName = header::HOST;

/// The headers the proxy adds to a forwarded request: `X-Forwarded-For` (the client appended to any
/// it came with), `X-Real-IP`, `X-Forwarded-Proto`. The upstream connection writes them after the
/// request's own headers, which lose any of these names: they never enter the request's map, which
/// saved three insertions and the map's growth per request.
pub(crate) type Forwarding = [(&'static HeaderName, HeaderValue); 3];

/// `forwarding` with `Host: host` (a server reached over TLS is sent its own name).
pub(super) fn with_host(forwarding: &Forwarding, host: &HeaderValue) -> [(&'static HeaderName, HeaderValue); 4] {
    let [first, second, third] = forwarding.clone();
    [first, second, third, (&HOST, host.clone())]
}

/// Rewrites a client request's headers for the backend: hop-by-hop headers go, `Host` stays as the
/// client sent it (port kept; `host` is set when the request carried none, as HTTP/2 requests carry
/// the authority instead). Returns the forwarding headers to add; `client_ip` is the peer address as
/// a header value, made once per connection.
pub(super) fn to_upstream(
    headers: &mut HeaderMap,
    host: Option<HeaderValue>,
    client_ip: &HeaderValue,
    https: bool,
    upgrade: bool,
) -> Forwarding {
    strip_hop_by_hop(headers, upgrade);
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    let mut earlier = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    let forwarded_for = if earlier.peek().is_some() {
        let mut chain = Vec::new();
        for value in earlier {
            chain.extend_from_slice(value.as_bytes());
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(client_ip.as_bytes());
        HeaderValue::from_bytes(&chain).unwrap_or_else(|_| client_ip.clone())
    } else {
        client_ip.clone()
    };
    [
        (&X_FORWARDED_FOR, forwarded_for),
        (&X_REAL_IP, client_ip.clone()),
        (&X_FORWARDED_PROTO, HeaderValue::from_static(if https { "https" } else { "http" })),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("accept"));
    }

    #[test]
    fn appends_to_forwarded_for() {
        let mut headers = map(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2")]);
        let added = to_upstream(
            &mut headers,
            Some(HeaderValue::from_static("h:8000")),
            &HeaderValue::from_static("10.0.0.9"),
            true,
            false,
        );
        let added: Vec<(&str, &str)> =
            added.iter().map(|(name, value)| (name.as_str(), value.to_str().unwrap())).collect();
        assert_eq!(
            added,
            [
                ("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.0.0.9"),
                ("x-real-ip", "10.0.0.9"),
                ("x-forwarded-proto", "https")
            ]
        );
        assert_eq!(headers["host"], "h:8000");
    }

    #[test]
    fn keeps_the_upgrade_pair_for_websockets() {
        let mut headers = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
    }
}
