//! Static files: content types, validators and 304, ranges, HEAD, precompressed siblings, caching
//! headers, index files, and no way out of the folder.

use crate::support::*;
use http::{Request, StatusCode};
use std::io::Write;

const CONFIG: &str = r#"
[[server]]
listen = ["127.0.0.1:0"]
add_header = { "X-Content-Type-Options" = "nosniff" }

  [[server.location]]
  prefix = "/"
  root = "html"
  expires = "7d"
  cache_control = "public, no-transform"

  [[server.location]]
  prefix = "/assets"
  alias = "html/"

  [[server.location]]
  prefix = "/loose/"
  alias = "html/"
  allow_symlinks_outside = true
"#;

const APP_JS: &str = "console.log('hello from a static file');\n";

/// `DIR/html` with files, a folder without index, a symlink out of it and one inside; `DIR/secret.txt`
/// outside.
async fn gateway() -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("html");
    std::fs::create_dir_all(html.join("sub")).unwrap();
    std::fs::write(html.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(html.join("app.js"), APP_JS).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(APP_JS.as_bytes()).unwrap();
    std::fs::write(html.join("app.js.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(html.join("data.bin"), (0..100u8).collect::<Vec<_>>()).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), html.join("escape.txt")).unwrap();
    std::os::unix::fs::symlink(html.join("app.js"), html.join("inside.js")).unwrap();
    TestGateway::start_in(dir, CONFIG).await
}

fn request(path: &str, headers: &[(&str, &str)]) -> Request<TestBody> {
    let mut request = Request::get(path).header("host", "h");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(full("")).unwrap()
}

#[tokio::test]
async fn files_come_with_type_validators_and_caching_headers() {
    let gw = gateway().await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let (status, headers, body) = send(&mut client, request("/app.js", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, APP_JS);
    assert!(headers["content-type"].to_str().unwrap().ends_with("javascript"), "{headers:?}");
    assert_eq!(headers["content-length"], APP_JS.len().to_string());
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(headers["cache-control"], "max-age=604800, public, no-transform");
    let expires = httpdate::parse_http_date(headers["expires"].to_str().unwrap()).unwrap();
    let ahead = expires.duration_since(std::time::SystemTime::now()).unwrap().as_secs();
    assert!((604_700..=604_800).contains(&ahead), "expires {ahead} s ahead");
    assert_eq!(headers["vary"], "Accept-Encoding", "app.js has a precompressed sibling");
    assert_eq!(headers["x-content-type-options"], "nosniff", "the server's headers reach static files");
    let etag = headers["etag"].clone();
    let last_modified = headers["last-modified"].clone();

    let (status, headers, body) =
        send(&mut client, request("/app.js", &[("if-none-match", etag.to_str().unwrap())])).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!((headers["etag"].clone(), body.as_str()), (etag.clone(), ""));
    assert_eq!(headers["cache-control"], "max-age=604800, public, no-transform");
    let since = [("if-modified-since", last_modified.to_str().unwrap())];
    assert_eq!(send(&mut client, request("/app.js", &since)).await.0, StatusCode::NOT_MODIFIED);
    let stale = [("if-none-match", "\"0-0\""), ("if-modified-since", last_modified.to_str().unwrap())];
    assert_eq!(send(&mut client, request("/app.js", &stale)).await.0, StatusCode::OK, "If-None-Match decides");

    let head = Request::head("/app.js").header("host", "h").body(full("")).unwrap();
    let (status, headers, body) = send(&mut client, head).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    assert_eq!(headers["content-length"], APP_JS.len().to_string());

    let (status, _, body) = send(&mut client, request("/", &[])).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "<h1>home</h1>"));
    let post = Request::post("/app.js").header("host", "h").body(full("x")).unwrap();
    let (status, headers, _) = send(&mut client, post).await;
    assert_eq!((status, headers["allow"].to_str().unwrap()), (StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD"));
}

#[tokio::test]
async fn byte_ranges_are_served_206_and_416() {
    let gw = gateway().await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let (status, headers, body) = send(&mut client, request("/data.bin", &[("range", "bytes=10-19")])).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(headers["content-range"], "bytes 10-19/100");
    assert_eq!(body.as_bytes(), (10..20u8).collect::<Vec<_>>());
    let (status, headers, body) = send(&mut client, request("/data.bin", &[("range", "bytes=-5")])).await;
    assert_eq!((status, headers["content-range"].to_str().unwrap()), (StatusCode::PARTIAL_CONTENT, "bytes 95-99/100"));
    assert_eq!(body.as_bytes(), (95..100u8).collect::<Vec<_>>());
    let (status, headers, _) = send(&mut client, request("/data.bin", &[("range", "bytes=200-")])).await;
    assert_eq!(
        (status, headers["content-range"].to_str().unwrap()),
        (StatusCode::RANGE_NOT_SATISFIABLE, "bytes */100")
    );
    let changed = [("range", "bytes=0-9"), ("if-range", "\"0-0\"")];
    let (status, _, body) = send(&mut client, request("/data.bin", &changed)).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 100), "an If-Range that no longer matches gets the whole file");
}

#[tokio::test]
async fn a_precompressed_sibling_is_served_to_clients_that_accept_it() {
    let gw = gateway().await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let response = client.send_request(request("/app.js", &[("accept-encoding", "br, gzip")])).await.unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert!(response.headers()["content-type"].to_str().unwrap().ends_with("javascript"));
    assert!(!response.headers().contains_key("accept-ranges"));
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain).unwrap();
    assert_eq!(plain, APP_JS);
}

#[tokio::test]
async fn nothing_outside_the_folder_is_reachable() {
    let gw = gateway().await;
    let addr = gw.addr("127.0.0.1:0");
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/..%2F..%2Fsecret.txt",
        "/assets../secret.txt",
        "/assets/..%2fsecret.txt",
        "/secret.txt",
    ] {
        let (status, _, body) = fetch(addr, path).await;
        assert!(matches!(status.as_u16(), 400 | 403 | 404), "{path}: {status}");
        assert_ne!(body, "secret", "{path}");
    }
    let (status, _, _) = fetch(addr, "/escape.txt").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a symlink out of the folder");
    assert_eq!(fetch(addr, "/loose/escape.txt").await.2, "secret", "unless allowed");
    assert_eq!(fetch(addr, "/inside.js").await.2, APP_JS, "a symlink within the folder is fine");
    assert_eq!(fetch(addr, "/assets/app.js").await.2, APP_JS);
    let (status, headers, _) = fetch(addr, "/sub?x=1").await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (StatusCode::MOVED_PERMANENTLY, "/sub/?x=1"));
    assert_eq!(fetch(addr, "/sub/").await.0, StatusCode::FORBIDDEN, "no listings");
    assert_eq!(fetch(addr, "/missing.css").await.0, StatusCode::NOT_FOUND);
}
