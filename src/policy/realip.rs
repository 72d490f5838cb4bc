//! The client's address behind trusted proxies (nginx's realip module): when the socket peer is in
//! `[http] trusted_proxies`, the client is the rightmost address of `X-Forwarded-For` that is not a
//! trusted proxy itself (else `X-Real-IP`). Addresses from anyone else are never believed, so a
//! client cannot dodge a rate limit by sending its own `X-Forwarded-For`.

use crate::client::ClientInfo;
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use std::borrow::Cow;
use std::net::IpAddr;

/// The compiled `trusted_proxies` list.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// The list; entries were validated at load.
    pub(crate) fn new(entries: impl IntoIterator<Item = IpNet>) -> TrustedProxies {
        TrustedProxies { nets: entries.into_iter().collect() }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The request's client: the connection's, or the one a trusted proxy names.
    pub(crate) fn client<'a>(&self, connection: &'a ClientInfo, headers: &HeaderMap) -> Cow<'a, ClientInfo> {
        if self.nets.is_empty() || !self.trusts(connection.peer.ip()) {
            return Cow::Borrowed(connection);
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        let from_chain = forwarded.iter().rev().find(|ip| !self.trusts(**ip)).or(forwarded.first()).copied();
        let from_real_ip =
            || headers.get("x-real-ip").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<IpAddr>().ok());
        match from_chain.or_else(from_real_ip) {
            Some(ip) => match HeaderValue::try_from(ip.to_string()) {
                Ok(value) => Cow::Owned(ClientInfo { ip: value, ..connection.clone() }),
                Err(_) => Cow::Borrowed(connection),
            },
            None => Cow::Borrowed(connection),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_net;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_trusted_peers_are_believed_and_the_rightmost_untrusted_address_wins() {
        let trusted = TrustedProxies::new(["10.0.0.0/8", "127.0.0.1"].iter().filter_map(|t| parse_net(t)));
        let via_proxy = ClientInfo::new("10.1.2.3:5000".parse().unwrap(), false);
        let chain = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.7, 10.9.9.9")]);
        assert_eq!(trusted.client(&via_proxy, &chain).ip, "198.51.100.7", "spoofed left entries are ignored");
        let real_ip = headers(&[("x-real-ip", "198.51.100.8")]);
        assert_eq!(trusted.client(&via_proxy, &real_ip).ip, "198.51.100.8");
        let direct = ClientInfo::new("192.0.2.1:5000".parse().unwrap(), false);
        assert_eq!(trusted.client(&direct, &chain).ip, "192.0.2.1", "an untrusted peer's header is not believed");
        assert!(parse_net("not an address").is_none());
    }
}
