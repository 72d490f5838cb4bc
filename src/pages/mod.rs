//! The gateway's own web pages, built into the binary: the image question page a location serves
//! with `page = "chat"`, and the dashboard on the admin listener's `/`. Each is one HTML document
//! with its style and script inline, assembled once (at config load for the chat page, whose
//! settings come from the API location it talks to), and served with a Content-Security-Policy that
//! allows exactly that style and script (by their SHA-256), same-origin requests and images from
//! the page itself: no CDN, nothing from the network, and no HTML a model writes can run.

use aws_lc_rs::digest;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use serde::Serialize;
use std::sync::{LazyLock, OnceLock};

const CHAT_HTML: &str = include_str!("chat.html");
const CHAT_CSS: &str = include_str!("chat.css");
const CHAT_JS: &str = include_str!("chat.js");
const DASHBOARD_HTML: &str = include_str!("dashboard.html");
const DASHBOARD_CSS: &str = include_str!("dashboard.css");
const DASHBOARD_JS: &str = include_str!("dashboard.js");

/// What the chat page knows of the API it talks to, found at config load.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct ChatSettings {
    /// The OpenAI-compatible base path (`page_api`, `/v1`): chat completions and models under it.
    pub(crate) api: String,
    /// The API location wants an API key (`auth = "api_key"`).
    pub(crate) key_required: bool,
    /// Images are scaled down in the browser to at most this many pixels before upload.
    pub(crate) max_pixels: u64,
    /// And to at most this many pixels on the longer side, when the API location says so.
    pub(crate) max_side: Option<u32>,
}

/// A location's `page = "chat"`. Its settings come from the API location it calls, so the page is
/// assembled once its server's locations are all compiled (`settle`).
pub(crate) struct ChatPage {
    /// `page_api`, without a trailing `/`.
    pub(crate) api: String,
    page: OnceLock<Page>,
}

impl ChatPage {
    /// The page for the API under `api`, not yet assembled.
    pub(crate) fn new(api: &str) -> ChatPage {
        ChatPage { api: api.trim_end_matches('/').to_string(), page: OnceLock::new() }
    }

    /// Assembles the page with what its API location allows.
    pub(crate) fn settle(&self, key_required: bool, (max_pixels, max_side): (u64, Option<u32>)) {
        let settings = ChatSettings { api: self.api.clone(), key_required, max_pixels, max_side };
        let _ = self.page.set(Page::chat(&settings));
    }

    /// The answer to a request for the page.
    pub(crate) fn serve(&self, method: &Method) -> Response<Bytes> {
        match self.page.get() {
            Some(page) => page.serve(method),
            // Settled at load, always; an unsettled page would be a bug, answered as one.
            None => {
                let mut response = Response::new(Bytes::from_static(b"page not ready\n"));
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                response
            }
        }
    }
}

/// A page, ready to serve.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    html: Bytes,
    policy: HeaderValue,
}

impl Page {
    /// The image question page for an API with `settings`.
    pub(crate) fn chat(settings: &ChatSettings) -> Page {
        let config = serde_json::to_string(settings).unwrap_or_else(|_| "{}".into());
        // JSON in a data block: `<` escaped, so no string in it can close the element.
        Page::assemble(CHAT_HTML, CHAT_CSS, CHAT_JS, &config.replace('<', "\\u003c"))
    }

    /// The admin dashboard.
    pub(crate) fn dashboard() -> &'static Page {
        static DASHBOARD: LazyLock<Page> =
            LazyLock::new(|| Page::assemble(DASHBOARD_HTML, DASHBOARD_CSS, DASHBOARD_JS, "{}"));
        &DASHBOARD
    }

    fn assemble(html: &str, css: &str, js: &str, config: &str) -> Page {
        let hash = |text: &str| {
            let sum = digest::digest(&digest::SHA256, text.as_bytes());
            format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(sum.as_ref()))
        };
        let policy = format!(
            "default-src 'none'; style-src {}; script-src {}; connect-src 'self'; img-src 'self' data: blob:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(css),
            hash(js)
        );
        let html = html.replace("/*STYLE*/", css).replace("/*SCRIPT*/", js).replace("/*CONFIG*/", config);
        Page {
            html: Bytes::from(html),
            policy: HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'")),
        }
    }

    /// The answer to a request for the page: the document for GET and HEAD (HEAD's body is dropped
    /// by the connection), 405 for other methods.
    pub(crate) fn serve(&self, method: &Method) -> Response<Bytes> {
        if method != Method::GET && method != Method::HEAD {
            let mut response = Response::new(Bytes::from_static(b"method not allowed\n"));
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let mut response = Response::new(self.html.clone());
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        headers.insert(header::CONTENT_SECURITY_POLICY, self.policy.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzipped_size(bytes: &[u8]) -> usize {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap().len()
    }

    #[test]
    fn each_page_is_one_document_under_100_kb_gzipped_whose_policy_allows_only_its_own_code() {
        let settings = ChatSettings { api: "/v1".into(), key_required: true, max_pixels: 1 << 20, max_side: None };
        for page in [Page::chat(&settings), Page::dashboard().clone()] {
            let html = std::str::from_utf8(&page.html).unwrap();
            assert!(!html.contains("/*STYLE*/") && !html.contains("/*SCRIPT*/") && !html.contains("/*CONFIG*/"));
            assert!(!html.contains("http://") && !html.contains("https://"), "nothing from the network");
            assert!(gzipped_size(&page.html) < 100_000, "{} bytes gzipped", gzipped_size(&page.html));
            let policy = page.policy.to_str().unwrap();
            assert_eq!(policy.matches("'sha256-").count(), 2, "{policy}");
            assert!(policy.starts_with("default-src 'none'") && policy.contains("connect-src 'self'"));
        }
    }

    #[test]
    fn the_chat_settings_cannot_close_their_element() {
        let settings = ChatSettings {
            api: "/v1</script><script>alert(1)".into(),
            key_required: false,
            max_pixels: 1,
            max_side: None,
        };
        let page = Page::chat(&settings);
        let html = std::str::from_utf8(&page.html).unwrap();
        assert!(!html.contains("</script><script>alert(1)"));
        assert!(html.contains(r#""api":"/v1\u003c/script>\u003cscript>alert(1)""#), "{html}");
    }
}
