//! Choosing what serves a request: the virtual server by Host (or TLS SNI), then the location by path
//! in nginx's order — exact match, else the longest prefix (final if it says `skip_regex`), else the
//! first matching regex in config order, else that longest prefix.

use crate::ai::images::ImageLimits;
use crate::ai::Inference;
use crate::ai::ModelRouter;
use crate::canary::ProxyTarget;
use crate::compress::CompressPolicy;
use crate::cost::ImageCosts;
use crate::error::ErrorFormat;
use crate::keys::KeyStore;
use crate::pages::ChatPage;
use crate::policy::headers::HeaderEdits;
use crate::policy::{ConnLimit, RateLimit};
use crate::proxy::BodyLimits;
use crate::static_files::StaticFiles;
use crate::template::Template;
use crate::upstream::Upstream;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use regex::Regex;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// What a location does with a request.
pub(crate) enum Handler {
    /// Forward to an upstream (or one of its canaries).
    Proxy(ProxyTarget),
    /// Forward to the upstream serving the body's `model`.
    Models(ModelRouter),
    /// Serve files from a folder.
    Static(StaticFiles),
    /// Answer a fixed response.
    Return { status: StatusCode, body: Bytes, content_type: HeaderValue },
    /// Answer a redirect to a URL built from the request.
    Redirect { status: StatusCode, url: Template },
    /// Serve a built-in web page (`page`).
    Page(ChatPage),
}

impl Handler {
    /// Whether any upstream it forwards to passes `test`.
    pub(crate) fn any_upstream(&self, test: impl Fn(&Upstream) -> bool) -> bool {
        match self {
            Handler::Proxy(target) => target.upstreams().any(|upstream| test(upstream)),
            Handler::Models(router) => router.upstreams().any(|upstream| test(upstream)),
            Handler::Static(_) | Handler::Return { .. } | Handler::Redirect { .. } | Handler::Page(_) => false,
        }
    }
}

/// A compiled `[[server.location]]`.
pub(crate) struct Location {
    /// Its handler.
    pub(crate) handler: Handler,
    /// Request headers set or removed before the handler (`proxy_set_header`): the server's, then the
    /// location's.
    pub(crate) request_headers: HeaderEdits,
    /// Response headers removed (`proxy_hide_header`) and added (`add_header`) on every response.
    pub(crate) response_headers: HeaderEdits,
    /// Request body size and read timeout (`client_max_body_size`, `client_body_timeout`).
    pub(crate) body: BodyLimits,
    /// Response compression, if on.
    pub(crate) compress: Option<CompressPolicy>,
    /// Where requests here are accounted (metrics, access log): an index into
    /// `accounting::Ledger::accounts`.
    pub(crate) account: usize,
    /// Rate limits checked before the handler.
    pub(crate) limits: Vec<RateLimit>,
    /// Concurrency limits held until the response ends.
    pub(crate) conn_limits: Vec<ConnLimit>,
    /// How errors answered here look.
    pub(crate) errors: ErrorFormat,
    /// Which requests here are inference requests (`inference`), for retries.
    pub(crate) inference: Inference,
    /// The API keys a request must present one of (`auth = "api_key"`); `None`: no authentication.
    pub(crate) keys: Option<Arc<KeyStore>>,
    /// How the models count images (`[[image_cost]]`), for the estimates of requests' cost.
    pub(crate) image_costs: Arc<ImageCosts>,
    /// Limits on the images of chat requests (`images`); `None` when off or not an API location.
    pub(crate) images: Option<ImageLimits>,
    /// Whether a proxy or models location reads POST bodies whole before forwarding them (see
    /// `pipeline::read_first`).
    pub(crate) reads_posts: bool,
    /// Whether an upstream here holds requests' estimated tokens (`max_inflight_tokens`): its POSTs
    /// are estimated.
    pub(crate) weighs_tokens: bool,
    /// Keep-alive comments for a streamed request the model is slow to answer (`sse_keepalive`).
    pub(crate) sse_keepalive: Option<std::time::Duration>,
}

/// Locations of one server, indexed for nginx's matching order.
#[derive(Default)]
pub(crate) struct LocationTable {
    locations: Vec<Arc<Location>>,
    exact: HashMap<String, usize>,
    /// Longest first, so the first hit is the longest match.
    prefixes: Vec<(String, bool, usize)>,
    regexes: Vec<(Regex, usize)>,
}

impl LocationTable {
    /// Adds an exact-path location.
    pub(crate) fn add_exact(&mut self, path: String, location: Location) {
        let index = self.push(location);
        self.exact.entry(path).or_insert(index);
    }

    /// Adds a prefix location; `skip_regex` is nginx's `^~`.
    pub(crate) fn add_prefix(&mut self, prefix: String, skip_regex: bool, location: Location) {
        let index = self.push(location);
        self.prefixes.push((prefix, skip_regex, index));
        // Stable sort keeps config order among equal prefixes; the first one wins, as in nginx.
        self.prefixes.sort_by_key(|(prefix, _, _)| std::cmp::Reverse(prefix.len()));
    }

    /// Adds a regex location, checked after those added before it.
    pub(crate) fn add_regex(&mut self, regex: Regex, location: Location) {
        let index = self.push(location);
        self.regexes.push((regex, index));
    }

    /// Every location, in the order added.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<Location>> {
        self.locations.iter()
    }

    fn push(&mut self, location: Location) -> usize {
        self.locations.push(Arc::new(location));
        self.locations.len() - 1
    }

    /// The location for a normalized path, if any.
    pub(crate) fn find(&self, path: &str) -> Option<&Arc<Location>> {
        if let Some(&index) = self.exact.get(path) {
            return Some(&self.locations[index]);
        }
        let prefix = self.prefixes.iter().find(|(prefix, _, _)| path.starts_with(prefix.as_str()));
        if let Some((_, true, index)) = prefix {
            return Some(&self.locations[*index]);
        }
        if let Some((_, index)) = self.regexes.iter().find(|(regex, _)| regex.is_match(path)) {
            return Some(&self.locations[*index]);
        }
        prefix.map(|(_, _, index)| &self.locations[*index])
    }
}

/// A compiled `[[server]]`.
pub(crate) struct VirtualServer {
    /// First `server_name`, for `$server_name`.
    pub(crate) primary_name: String,
    /// Its locations.
    pub(crate) locations: LocationTable,
    /// Response header edits for responses that match no location.
    pub(crate) response_headers: HeaderEdits,
    /// Where requests matching no location are accounted: an index into
    /// `accounting::Ledger::accounts`.
    pub(crate) account: usize,
    /// Error format when no location matches.
    pub(crate) errors: ErrorFormat,
}

/// Values chosen by host name: exact names, then the longest matching `*.suffix` wildcard, then the
/// default. Used for virtual servers by Host and for certificates by SNI.
#[derive(Debug)]
pub(crate) struct NameTable<T> {
    exact: HashMap<String, T>,
    /// `(".example.com", value)`, longest suffix first.
    wildcard: Vec<(String, T)>,
    default: T,
}

impl<T: Clone> NameTable<T> {
    /// A table answering `default` for every name until names are added.
    pub(crate) fn new(default: T) -> Self {
        NameTable { exact: HashMap::new(), wildcard: Vec::new(), default }
    }

    /// Adds `name` (`api.example.com` or `*.example.com`); the first value added for a name stays.
    pub(crate) fn add(&mut self, name: &str, value: T) {
        let name = name.to_ascii_lowercase();
        match name.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => {
                if !self.wildcard.iter().any(|(s, _)| s == suffix) {
                    self.wildcard.push((suffix.to_string(), value));
                    self.wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
                }
            }
            _ => {
                self.exact.entry(name).or_insert(value);
            }
        }
    }

    /// The value for a host name (any case, with or without `:port` or a trailing dot).
    pub(crate) fn select(&self, host: Option<&str>) -> &T {
        let Some(host) = host else {
            return &self.default;
        };
        let host = crate::uri::strip_port(host).trim_end_matches('.');
        let host: Cow<str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        if let Some(value) = self.exact.get(host.as_ref()) {
            return value;
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map_or(&self.default, |(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(tag: u16) -> Location {
        Location {
            handler: Handler::Return {
                status: StatusCode::from_u16(200 + tag).unwrap(),
                body: Bytes::new(),
                content_type: HeaderValue::from_static("text/plain"),
            },
            request_headers: Default::default(),
            response_headers: Default::default(),
            body: BodyLimits { max: u64::MAX, idle: std::time::Duration::from_secs(60) },
            inference: Inference::default(),
            keys: None,
            image_costs: Default::default(),
            images: None,
            reads_posts: false,
            weighs_tokens: false,
            sse_keepalive: None,
            compress: None,
            account: 0,
            limits: Vec::new(),
            conn_limits: Vec::new(),
            errors: ErrorFormat::Text,
        }
    }

    fn tag(table: &LocationTable, path: &str) -> Option<u16> {
        table.find(path).map(|l| match &l.handler {
            Handler::Return { status, .. } => status.as_u16() - 200,
            _ => unreachable!(),
        })
    }

    #[test]
    fn follows_nginx_order() {
        let mut table = LocationTable::default();
        table.add_prefix("/".into(), false, location(0));
        table.add_regex(Regex::new(r"(?i)\.(png|css)$").unwrap(), location(1));
        table.add_prefix("/v1/inference".into(), false, location(2));
        table.add_exact("/health".into(), location(3));
        table.add_prefix("/assets/".into(), true, location(4));
        table.add_regex(Regex::new(r"\.png$").unwrap(), location(5));
        assert_eq!(tag(&table, "/anything"), Some(0));
        assert_eq!(tag(&table, "/img/a.PNG"), Some(1), "regex beats the longest prefix");
        assert_eq!(tag(&table, "/img/a.png"), Some(1), "first regex in config order wins");
        assert_eq!(tag(&table, "/v1/inference/run"), Some(2));
        assert_eq!(tag(&table, "/health"), Some(3));
        assert_eq!(tag(&table, "/health/x"), Some(0), "exact means exact");
        assert_eq!(tag(&table, "/assets/x.png"), Some(4), "skip_regex stops regex checks");
    }

    #[test]
    fn no_location_no_match() {
        let mut table = LocationTable::default();
        table.add_prefix("/api".into(), false, location(0));
        assert_eq!(tag(&table, "/other"), None);
    }

    #[test]
    fn names_select_exact_then_longest_wildcard_then_default() {
        let mut names = NameTable::new("default");
        names.add("api.example.com", "api");
        names.add("*.example.com", "wild");
        names.add("*.eu.example.com", "eu");
        assert_eq!(*names.select(Some("API.example.com:8443")), "api");
        assert_eq!(*names.select(Some("x.example.com")), "wild");
        assert_eq!(*names.select(Some("a.eu.example.com")), "eu");
        assert_eq!(*names.select(Some("example.com")), "default");
        assert_eq!(*names.select(None), "default");
        assert_eq!(*names.select(Some("[::1]:80")), "default");
    }
}
