//! Header edits configured on servers and locations: `proxy_set_header` on the request, and
//! `proxy_hide_header` then `add_header` on the response. Compiled once at config load.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Edits to one header map: removals first, then values set (replacing any earlier value).
#[derive(Debug, Default, Clone)]
pub(crate) struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    /// Edits that remove `remove` and set `set`.
    pub(crate) fn new(remove: Vec<HeaderName>, set: Vec<(HeaderName, HeaderValue)>) -> HeaderEdits {
        HeaderEdits { remove, set }
    }

    /// These edits followed by `more` (a location's on top of its server's), as one list: what `more`
    /// removes or sets overrides what these set.
    pub(crate) fn then(&self, more: HeaderEdits) -> HeaderEdits {
        let overridden = |name: &HeaderName| more.remove.contains(name) || more.set.iter().any(|(n, _)| n == name);
        let mut remove = self.remove.clone();
        remove.extend(more.remove.iter().filter(|n| !remove.contains(n)).cloned().collect::<Vec<_>>());
        let mut set: Vec<_> = self.set.iter().filter(|(name, _)| !overridden(name)).cloned().collect();
        set.extend(more.set);
        HeaderEdits { remove, set }
    }

    /// Applies the edits.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &'static str) -> HeaderName {
        HeaderName::from_static(text)
    }

    #[test]
    fn a_location_overrides_what_its_server_sets_and_keeps_the_rest() {
        let server = HeaderEdits::new(
            vec![name("server")],
            vec![(name("hsts"), HeaderValue::from_static("1")), (name("x"), HeaderValue::from_static("server"))],
        );
        let location = HeaderEdits::new(vec![name("hsts")], vec![(name("x"), HeaderValue::from_static("location"))]);
        let mut headers = HeaderMap::new();
        headers.insert(name("server"), HeaderValue::from_static("uvicorn"));
        headers.insert(name("hsts"), HeaderValue::from_static("upstream"));
        server.then(location).apply(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert_eq!(headers["x"], "location");
    }
}
