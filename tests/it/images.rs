//! Image limits end to end, with real PNG, JPEG and WebP bytes made here: each limit refuses the
//! first image past it with OpenAI's JSON naming its place, before the backend sees a byte; the
//! limits are on by default where the body is read anyway (`auth = "api_key"`), off on a plain
//! `proxy` location, on there when asked.

use crate::support::*;
use base64::Engine as _;
use http::{Request, StatusCode};
use serde_json::{json, Value};

/// A gateway config proxying `locations` (location tables) to the upstream `model` at `model`.
fn model_config(model: &Backend, locations: &str) -> String {
    format!("[[upstream]]\nname = \"model\"\nservers = [{{ addr = \"{}\" }}]\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n{locations}", model.authority())
}

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

pub(crate) fn png(width: u32, height: u32) -> String {
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
    let locations = format!(
        r#"
  [[server.location]]
  prefix = "/limited/"
  proxy = "model"
  images = {{ enabled = true, max_count = 3, max_bytes = "20k", max_pixels = 4096, max_request_pixels = 6000, formats = ["png", "jpeg"] }}

  [[server.location]]
  prefix = "/tiny/"
  proxy = "model"
  images = {{ enabled = true, max_bytes = "1k" }}

  [[server.location]]
  prefix = "/per-model/"
  proxy = "model"
  images = {{ enabled = true, models = {{ "glm-*" = {{ max_count = 1 }} }} }}

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
        sha256_hex("ig-images")
    );
    let config = model_config(&backend, &locations);
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
        (
            "/per-model/",
            vec![png(2, 2); 2],
            StatusCode::BAD_REQUEST,
            Some(("too_many_images", "messages[0].content[2]")),
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

/// Three backends behind `balance = "hash"` on `hash_key = "image"`; each holds its answers while
/// `hold` says so.
async fn image_affinity() -> (Vec<Backend>, TestGateway, tokio::sync::watch::Sender<bool>) {
    let (hold, held) = tokio::sync::watch::channel(false);
    let mut backends = Vec::new();
    for _ in 0..3 {
        let held = held.clone();
        backends.push(
            Backend::start(move |_| {
                let mut held = held.clone();
                async move {
                    let _ = held.wait_for(|hold| !hold).await;
                    http::Response::new(full("ok"))
                }
            })
            .await,
        );
    }
    let servers: Vec<String> = backends.iter().map(|b| format!("{{ addr = \"{}\" }}", b.authority())).collect();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[upstream]]
name = "model"
balance = "hash"
hash_key = "image"
servers = [{}]

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "model"
"#,
        servers.join(", ")
    );
    (backends, TestGateway::start(&config).await, hold)
}

/// Waits (at most 5 s) until no server has a request in flight, as the admin API's `/status` says.
async fn settle(admin: std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, _, body) = fetch(admin, "/status").await;
        let status: Value = serde_json::from_str(&body).unwrap();
        let servers = status["upstreams"][0]["servers"].as_array().unwrap();
        if servers.iter().all(|server| server["in_flight"] == 0) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "still in flight: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

fn counts(backends: &[Backend]) -> Vec<usize> {
    backends.iter().map(Backend::request_count).collect()
}

fn question(image: &str, text: &str) -> Request<TestBody> {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image}}]}]});
    Request::post("/v1/chat/completions").header("host", "localhost").body(full(body.to_string())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_about_one_image_reach_one_server_until_it_is_busy_or_drained() {
    let (backends, gw, hold) = image_affinity().await;
    let addr = gw.addr("127.0.0.1:0");
    let cat = png(32, 32);
    let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();
    // Ten questions about one image, one after the other: one server takes them all. (Each waits for
    // the last to leave the servers' in-flight counts, which it does just after its client has the
    // answer: a server one over the ring's load bound passes the key on.)
    for i in 0..10 {
        let (status, _, _) = send(&mut http1(addr).await, question(&cat, &format!("question {i}"))).await;
        assert_eq!(status, StatusCode::OK);
        settle(admin).await;
    }
    let after_cat = counts(&backends);
    let home = after_cat.iter().position(|&n| n == 10).unwrap_or_else(|| panic!("spread: {after_cat:?}"));
    // Other images spread over the servers.
    for side in 2..26 {
        send(&mut http1(addr).await, question(&png(side, side), "what?")).await;
    }
    let spread = counts(&backends);
    assert!(spread.iter().zip(&after_cat).all(|(now, before)| now > before), "24 images on all three: {spread:?}");

    // Bounded load: while the cat's server holds six answers at once, it passes new cat questions on.
    hold.send_replace(true);
    let before = counts(&backends);
    let mut pending = Vec::new();
    for i in 0..6 {
        let mut client = http1(addr).await;
        let request = question(&cat, &format!("busy {i}"));
        pending.push(tokio::spawn(async move { send(&mut client, request).await.0 }));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let busy = counts(&backends);
    hold.send_replace(false);
    for request in pending {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    let home_took = busy[home] - before[home];
    assert!((1..6).contains(&home_took), "the hot image's server took {home_took} of 6 at once: {busy:?}");

    // Drained, its images move to one other server, and stay there.
    let drain = Request::post(format!("/upstreams/model/servers/{}/drain", backends[home].authority()))
        .header("host", "localhost")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&mut http1(admin).await, drain).await.0, StatusCode::OK);
    let before = counts(&backends);
    for i in 0..5 {
        send(&mut http1(addr).await, question(&cat, &format!("drained {i}"))).await;
        settle(admin).await;
    }
    let moved: Vec<usize> = counts(&backends).iter().zip(&before).map(|(now, then)| now - then).collect();
    assert_eq!(moved[home], 0, "{moved:?}");
    assert_eq!(moved.iter().filter(|&&n| n == 5).count(), 1, "one other server takes them all: {moved:?}");
}

/// A model that answers `ok` and keeps every request body it received.
async fn recording_model() -> (Backend, std::sync::Arc<std::sync::Mutex<Vec<bytes::Bytes>>>) {
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<bytes::Bytes>::new()));
    let seen = bodies.clone();
    let model = Backend::start(move |request| {
        let seen = seen.clone();
        async move {
            let body = http_body_util::BodyExt::collect(request.into_body()).await.unwrap().to_bytes();
            seen.lock().unwrap().push(body);
            http::Response::new(full("ok"))
        }
    })
    .await;
    (model, bodies)
}

#[tokio::test]
async fn images_above_the_resize_limit_reach_the_backend_scaled_down() {
    let (backend, bodies) = recording_model().await;
    let locations = r#"
  [[server.location]]
  prefix = "/as-jpeg/"
  proxy = "model"
  images = { enabled = true, resize = { max_side = 64, format = "jpeg" } }

  [[server.location]]
  prefix = "/"
  proxy = "model"
  images = { enabled = true, resize = { max_side = 64, max_pixels = 1024 } }
"#;
    let config = model_config(&backend, locations);
    let gw = TestGateway::start(&config).await;
    let addr = gw.addr("127.0.0.1:0");
    let webp = image(image::ImageFormat::WebP, 300, 100, true);
    let small = png(20, 20);
    for (path, urls) in [("/", vec![png(256, 128), webp, small.clone()]), ("/as-jpeg/", vec![png(300, 300)])] {
        let (status, _, body) = send(&mut http1(addr).await, chat(path, &urls)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // What the backend received: each image decoded from the forwarded body.
    let forwarded: Vec<Vec<(image::ImageFormat, u32, u32, String)>> = bodies
        .lock()
        .unwrap()
        .iter()
        .map(|body| {
            let chat: Value = serde_json::from_slice(body).unwrap();
            let parts = chat["messages"][0]["content"].as_array().unwrap().clone();
            parts[1..]
                .iter()
                .map(|part| {
                    let url = part["image_url"]["url"].as_str().unwrap().to_string();
                    let bytes =
                        base64::engine::general_purpose::STANDARD.decode(url.split_once(",").unwrap().1).unwrap();
                    let format = image::guess_format(&bytes).unwrap();
                    let decoded = image::load_from_memory(&bytes).unwrap();
                    (format, decoded.width(), decoded.height(), url)
                })
                .collect()
        })
        .collect();
    let shape = |images: &[(image::ImageFormat, u32, u32, String)]| {
        images.iter().map(|(format, w, h, _)| (*format, *w, *h)).collect::<Vec<_>>()
    };
    // 256x128 within 64 a side and 1,024 pixels: 45x22; 300x100: 55x18, still WebP; 20x20 untouched.
    assert_eq!(
        shape(&forwarded[0]),
        [(image::ImageFormat::Png, 45, 22), (image::ImageFormat::WebP, 55, 18), (image::ImageFormat::Png, 20, 20)]
    );
    assert_eq!(forwarded[0][2].3, small, "an image within the limits is forwarded as it came");
    assert_eq!(shape(&forwarded[1]), [(image::ImageFormat::Jpeg, 64, 64)]);
}

#[tokio::test]
async fn remote_images_are_fetched_by_the_gateway_and_never_from_inside_unless_allowed() {
    let (model, bodies) = recording_model().await;
    // The image server, on loopback: a small PNG, a large one, and a 404.
    let small = base64::engine::general_purpose::STANDARD.decode(png(40, 20).split_once(',').unwrap().1).unwrap();
    let large = base64::engine::general_purpose::STANDARD
        .decode(image(image::ImageFormat::Png, 300, 300, true).split_once(',').unwrap().1)
        .unwrap();
    let images = Backend::start(move |request| {
        let (small, large) = (small.clone(), large.clone());
        async move {
            match request.uri().path() {
                "/cat.png" => http::Response::new(full(small)),
                "/big.png" => http::Response::new(full(large)),
                _ => http::Response::builder().status(404).body(full("")).unwrap(),
            }
        }
    })
    .await;
    let locations = r#"
  [[server.location]]
  prefix = "/inside/"
  proxy = "model"
  images = { enabled = true, remote = "fetch", fetch_private = true, max_bytes = "20k" }

  [[server.location]]
  prefix = "/"
  proxy = "model"
  images = { enabled = true, remote = "fetch" }
"#;
    let config = model_config(&model, locations);
    let gw = TestGateway::start(&config).await;
    let addr = gw.addr("127.0.0.1:0");
    let url = |path: &str| format!("http://{}{path}", images.authority());
    let rows = [
        ("/", url("/cat.png"), StatusCode::BAD_REQUEST, "image_url_not_allowed"),
        ("/", "http://169.254.169.254/latest/meta-data".to_string(), StatusCode::BAD_REQUEST, "image_url_not_allowed"),
        ("/", "http://[::ffff:127.0.0.1]:1/x.png".to_string(), StatusCode::BAD_REQUEST, "image_url_not_allowed"),
        ("/inside/", url("/missing.png"), StatusCode::BAD_REQUEST, "image_fetch_failed"),
        ("/inside/", url("/big.png"), StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
    ];
    for (path, image_url, status, code) in rows {
        let (got, _, body) = send(&mut http1(addr).await, chat(path, std::slice::from_ref(&image_url))).await;
        assert_eq!(got, status, "{image_url}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (error["error"]["code"].as_str(), error["error"]["param"].as_str()),
            (Some(code), Some("messages[0].content[1]")),
            "{body}"
        );
    }
    assert_eq!(images.request_count(), 2, "nothing was fetched from inside without leave");
    assert!(bodies.lock().unwrap().is_empty());
    // Allowed, the image reaches the model inline.
    let (status, _, body) = send(&mut http1(addr).await, chat("/inside/", &[url("/cat.png")])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let forwarded: Value = serde_json::from_slice(&bodies.lock().unwrap()[0]).unwrap();
    let inline = forwarded["messages"][0]["content"][1]["image_url"]["url"].as_str().unwrap();
    assert!(inline.starts_with("data:image/png;base64,"), "{inline}");
    let decoded =
        image::load_from_memory(&base64::engine::general_purpose::STANDARD.decode(&inline[22..]).unwrap()).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (40, 20));
}

#[tokio::test]
async fn an_https_image_is_fetched_over_tls_and_a_certificate_no_web_root_signed_is_refused() {
    let (model, bodies) = recording_model().await;
    // The image server: a gateway serving a PNG over TLS, with a certificate of a test CA.
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "images", &["127.0.0.1"]);
    std::fs::create_dir(dir.path().join("site")).unwrap();
    let cat = base64::engine::general_purpose::STANDARD.decode(png(40, 20).split_once(',').unwrap().1).unwrap();
    std::fs::write(dir.path().join("site/cat.png"), cat).unwrap();
    let site = "[[server]]\nlisten = [\"127.0.0.1:0\"]\ntls = { cert = \"images.crt\", key = \"images.key\" }\n\
                \n  [[server.location]]\n  prefix = \"/\"\n  root = \"site\"\n";
    let images = TestGateway::start_in(dir, site).await;
    let url = format!("https://{}/cat.png", images.addr("127.0.0.1:0"));
    let locations = "\n  [[server.location]]\n  prefix = \"/\"\n  proxy = \"model\"\n  \
                     images = { enabled = true, remote = \"fetch\", fetch_private = true }\n";
    let gw = TestGateway::start(&model_config(&model, locations)).await;
    let (status, _, body) = send(&mut http1(gw.addr("127.0.0.1:0")).await, chat("/", &[url])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "image_fetch_failed", "{body}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.ends_with("TLS with 127.0.0.1: invalid peer certificate: UnknownIssuer"), "{message}");
    assert!(bodies.lock().unwrap().is_empty(), "the model saw nothing");
}
