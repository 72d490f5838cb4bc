//! Canary releases: a `proxy` location sends some of its traffic to other upstreams — requests that
//! carry a matching header or cookie, and a weighted share of the rest, optionally sticky per client
//! address so one user keeps seeing one version.

use crate::upstream::Upstream;
use http::{header, HeaderName, HeaderValue, Request};
use std::hash::BuildHasher;
use std::sync::Arc;

/// One `canary = [...]` entry, compiled.
pub(crate) struct Canary {
    /// Where its requests go.
    pub(crate) upstream: Arc<Upstream>,
    /// Percent of the unmatched traffic (0-100).
    pub(crate) weight: u32,
    /// `Name: value` that sends a request here whatever the weight.
    pub(crate) header: Option<(HeaderName, HeaderValue)>,
    /// `name=value` cookie that does the same.
    pub(crate) cookie: Option<String>,
}

/// The upstreams of a `proxy` location.
pub(crate) struct ProxyTarget {
    /// Where requests go unless a canary takes them.
    pub(crate) primary: Arc<Upstream>,
    /// Canaries, checked in config order.
    pub(crate) canaries: Vec<Canary>,
    /// The weighted share is chosen by client address, not at random.
    pub(crate) sticky: bool,
    /// Fixed hasher seed, so a client stays on its side across workers and reloads.
    hasher: std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>,
}

impl ProxyTarget {
    /// A target with canaries.
    pub(crate) fn new(primary: Arc<Upstream>, canaries: Vec<Canary>, sticky: bool) -> ProxyTarget {
        ProxyTarget { primary, canaries, sticky, hasher: Default::default() }
    }

    /// Its upstreams: the primary, then the canaries'.
    pub(crate) fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        std::iter::once(&self.primary).chain(self.canaries.iter().map(|canary| &canary.upstream))
    }

    /// The upstream for this request.
    pub(crate) fn choose<B>(&self, request: &Request<B>, client_ip: &HeaderValue) -> &Arc<Upstream> {
        if self.canaries.is_empty() {
            return &self.primary;
        }
        let headers = request.headers();
        for canary in &self.canaries {
            let by_header =
                canary.header.as_ref().is_some_and(|(name, value)| headers.get_all(name).iter().any(|v| v == value));
            let by_cookie = canary.cookie.as_deref().is_some_and(|wanted| {
                headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .any(|c| c.trim() == wanted)
            });
            if by_header || by_cookie {
                return &canary.upstream;
            }
        }
        let roll =
            if self.sticky { (self.hasher.hash_one(client_ip.as_bytes()) % 100) as u32 } else { fastrand::u32(..100) };
        let mut threshold = 0;
        for canary in &self.canaries {
            threshold += canary.weight;
            if roll < threshold {
                return &canary.upstream;
            }
        }
        &self.primary
    }
}
