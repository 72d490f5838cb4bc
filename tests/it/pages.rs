//! The built-in pages as HTTP sees them (the browser's view is `browser.rs`): the chat page's
//! settings come from the API location it calls, each page is one document under a policy that
//! admits only its own code, and the config says where a page is set wrong.

use crate::support::*;
use http::{Request, StatusCode};
use serde_json::Value;

/// The settings the page's script reads, from its document.
fn settings(html: &str) -> Value {
    let start = html.find(r#"<script type="application/json" id="settings">"#).expect("a settings block") + 46;
    let end = start + html[start..].find("</script>").unwrap();
    serde_json::from_str(&html[start..end]).unwrap()
}

#[tokio::test]
async fn the_chat_page_takes_its_settings_from_its_api_location() {
    let backend = Backend::start(|_| async { http::Response::new(full("")) }).await;
    let config = format!(
        r#"
[[upstream]]
name = "model"
servers = [{{ addr = "{}" }}]

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  exact = "/"
  page = "chat"

  [[server.location]]
  prefix = "/ask/"
  page = "chat"
  page_api = "/open/v1/"

  [[server.location]]
  prefix = "/v1/"
  proxy = "model"
  auth = "api_key"
  images = {{ max_pixels = 4000000, resize = {{ max_side = 1536, max_pixels = 2000000 }} }}

  [[server.location]]
  prefix = "/open/"
  proxy = "model"
"#,
        backend.authority()
    );
    let gw = TestGateway::start(&config).await;
    let addr = gw.addr("127.0.0.1:0");
    let (status, headers, html) = fetch(addr, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'sha256-") && policy.contains("connect-src 'self'"), "{policy}");
    assert_eq!(
        settings(&html),
        serde_json::json!({"api": "/v1", "key_required": true, "max_pixels": 2000000, "max_side": 1536})
    );
    // An API without keys, whose location reads no images: the default bound, 50 megapixels.
    let (_, _, html) = fetch(addr, "/ask/").await;
    assert_eq!(
        settings(&html),
        serde_json::json!({"api": "/open/v1", "key_required": false, "max_pixels": 50_000_000, "max_side": null})
    );
    let post = Request::post("/").header("host", "localhost").body(full("")).unwrap();
    let (status, headers, _) = send(&mut http1(addr).await, post).await;
    assert_eq!((status, headers["allow"].to_str().unwrap()), (StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD"));
}

#[test]
fn a_page_set_wrong_is_a_located_config_error() {
    let source =
        |text: &str| infergate::config::Source { name: "pages.toml".into(), dir: ".".into(), text: text.into() };
    let rows = [
        ("[[server]]\nlisten = [\"127.0.0.1:0\"]\n  [[server.location]]\n  prefix = \"/\"\n  page = \"chat\"\n  return = { status = 200 }\n", "exactly one handler"),
        ("[[server]]\nlisten = [\"127.0.0.1:0\"]\n  [[server.location]]\n  prefix = \"/\"\n  page = \"dashboard\"\n", "unknown variant `dashboard`"),
        ("[[server]]\nlisten = [\"127.0.0.1:0\"]\n  [[server.location]]\n  prefix = \"/\"\n  return = { status = 200 }\n  page_api = \"/v1\"\n", "`page_api` needs `page`"),
        ("[[server]]\nlisten = [\"127.0.0.1:0\"]\n  [[server.location]]\n  prefix = \"/\"\n  page = \"chat\"\n  page_api = \"v1\"\n", "must be a path starting with `/`"),
    ];
    for (text, expected) in rows {
        let errors = infergate::config::load(&source(text)).unwrap_err().to_string();
        assert!(errors.contains(expected) && errors.contains("pages.toml:"), "{expected:?} in {errors}");
    }
}
