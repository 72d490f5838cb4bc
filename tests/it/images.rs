//! Image limits end to end, with real PNG, JPEG and WebP bytes made here: each limit refuses the
//! first image past it with OpenAI's JSON naming its place, before the backend sees a byte; the
//! limits are on by default where the body is read anyway (`auth = "api_key"`), off on a plain
//! `proxy` location, on there when asked.

use crate::support::*;
use base64::Engine as _;
use http::{Request, StatusCode};
use serde_json::{json, Value};

/// An image of `width` x `height` in `format`, noise or flat, as a `data:` URL.
fn image(format: image::ImageFormat, width: u32, height: u32, noise: bool) -> String {
    let pixels = image::RgbImage::from_fn(width, height, |x, y| {
        let v = if noise { ((x * 7919 + y * 104_729) % 251) as u8 } else { 128 };
        image::Rgb([v, v.wrapping_mul(3), v.wrapping_add(40)])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(pixels).write_to(&mut bytes, format).unwrap();
    let mime = format.to_mime_type();
    format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes.into_inner()))
}

fn png(width: u32, height: u32) -> String {
    image(image::ImageFormat::Png, width, height, false)
}

/// A chat request to `path` with a text part, then these image URLs.
fn chat(path: &str, urls: &[String]) -> Request<TestBody> {
    let mut parts = vec![json!({"type": "text", "text": "What is in these images?"})];
    parts.extend(urls.iter().map(|url| json!({"type": "image_url", "image_url": {"url": url}})));
    let body = json!({"model": "glm-4v-flash", "messages": [{"role": "user", "content": parts}]});
    Request::post(format!("{path}v1/chat/completions"))
        .header("host", "localhost")
        .header("authorization", "Bearer ig-images")
        .body(full(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn each_image_limit_refuses_before_the_backend_sees_a_byte() {
    let backend = Backend::hello().await;
    let config = format!(
        r#"
[[upstream]]
name = "model"
servers = [{{ addr = "{}" }}]

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/limited/"
  proxy = "model"
  images = {{ enabled = true, max_count = 3, max_bytes = "20k", max_pixels = 4096, max_request_pixels = 6000, formats = ["png", "jpeg"] }}

  [[server.location]]
  prefix = "/tiny/"
  proxy = "model"
  images = {{ enabled = true, max_bytes = "1k" }}

  [[server.location]]
  prefix = "/keyed/"
  proxy = "model"
  auth = "api_key"

  [[server.location]]
  prefix = "/"
  proxy = "model"

[[api_key]]
name = "images"
sha256 = "{}"
"#,
        backend.authority(),
        sha256_hex("ig-images")
    );
    let gw = TestGateway::start(&config).await;
    let addr = gw.addr("127.0.0.1:0");
    let jpeg = image(image::ImageFormat::Jpeg, 100, 50, false);
    let webp = image(image::ImageFormat::WebP, 30, 30, false);
    let remote = "https://example.com/cat.png".to_string();
    // (path, images, expected: status and, for a refusal, code and param)
    type Row = (&'static str, Vec<String>, StatusCode, Option<(&'static str, &'static str)>);
    let rows: Vec<Row> = vec![
        ("/limited/", vec![png(64, 64)], StatusCode::OK, None),
        (
            "/limited/",
            vec![webp.clone()],
            StatusCode::BAD_REQUEST,
            Some(("image_format_not_allowed", "messages[0].content[1]")),
        ),
        (
            "/limited/",
            vec![png(8, 8), jpeg.clone()],
            StatusCode::BAD_REQUEST,
            Some(("image_too_many_pixels", "messages[0].content[2]")),
        ),
        (
            "/limited/",
            vec![png(64, 64), png(40, 40), png(30, 30)],
            StatusCode::BAD_REQUEST,
            Some(("images_too_many_pixels", "messages[0].content[3]")),
        ),
        ("/limited/", vec![png(2, 2); 4], StatusCode::BAD_REQUEST, Some(("too_many_images", "messages[0].content[4]"))),
        (
            "/limited/",
            vec![remote.clone()],
            StatusCode::BAD_REQUEST,
            Some(("image_url_not_allowed", "messages[0].content[1]")),
        ),
        (
            "/tiny/",
            vec![image(image::ImageFormat::Png, 30, 30, true)],
            StatusCode::PAYLOAD_TOO_LARGE,
            Some(("image_too_large", "messages[0].content[1]")),
        ),
        ("/tiny/", vec!["data:image/png;base64,AAAA".into()], StatusCode::BAD_REQUEST, Some(("bad_request", ""))),
        (
            "/keyed/",
            vec![remote.clone()],
            StatusCode::BAD_REQUEST,
            Some(("image_url_not_allowed", "messages[0].content[1]")),
        ),
    ];
    for (path, urls, status, refusal) in rows {
        let (got, _, body) = send(&mut http1(addr).await, chat(path, &urls)).await;
        assert_eq!(got, status, "{path} {body}");
        if let Some((code, param)) = refusal {
            let error: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(error["error"]["code"], code, "{body}");
            assert_eq!(error["error"]["type"], "invalid_request_error");
            if !param.is_empty() {
                assert_eq!(error["error"]["param"], param, "{body}");
                assert!(error["error"]["message"].as_str().unwrap().starts_with(param), "{body}");
            }
        }
    }
    assert_eq!(backend.request_count(), 1, "no refused request reached the backend");
    // An escaped key (`image\u005furl`) is an image all the same.
    let escaped = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": remote}}]}]})
    .to_string()
    .replace("image_url", "image\\u005furl");
    let request = Request::post("/keyed/v1/chat/completions")
        .header("host", "localhost")
        .header("authorization", "Bearer ig-images")
        .body(full(escaped))
        .unwrap();
    assert_eq!(send(&mut http1(addr).await, request).await.0, StatusCode::BAD_REQUEST);
    // A plain proxy location streams its bodies and checks nothing unless asked.
    let (status, _, _) = send(&mut http1(addr).await, chat("/", &[remote, webp, jpeg])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend.request_count(), 2);
}
