//! The gateway's web pages in a real browser: Debian's Chromium, headless, driven by playwright-core
//! (`tests/browser/pages.mjs`, pinned in `tests/browser/package-lock.json`). This test starts the
//! simulated model, a model that answers markdown with HTML in it, and the gateway with the image
//! question page, API keys and the admin dashboard; the script asks, watches, stops, drains and
//! takes screenshots (into `target/browser-screenshots/`). `scripts/test.sh` provisions Chromium,
//! Node's packages and runs it; plain `cargo test` skips it.

use crate::support::*;
use http::Response;
use infergate::sim::engine::LatencyModel;
use infergate::sim::{Sim, SimOptions};
use std::time::Duration;

/// What the markdown model answers, in chunks: formatting the page renders, and HTML that must stay
/// text (it would set `window.__pwned` if it ran).
const MARKDOWN: [&str; 6] = [
    "## Seen\\n\\nA **red** square and `code`.\\n\\n",
    "- one\\n- two\\n\\n",
    "```\\nlet x = 1;\\n```\\n\\n",
    "<img src=x onerror=\\\"window.__pwned=1\\\">",
    "<script>window.__pwned=2</script>",
    " [a link](javascript:alert(1))",
];

async fn markdown_model() -> Backend {
    Backend::start(|request| async move {
        if request.uri().path().ends_with("/models") {
            return Response::new(full(r#"{"object":"list","data":[{"id":"markdown"}]}"#));
        }
        let mut events = String::new();
        for piece in MARKDOWN {
            events += &format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{piece}\"}}}}]}}\n\n");
        }
        events += "data: [DONE]\n\n";
        Response::builder().header("content-type", "text/event-stream").body(full(events)).unwrap()
    })
    .await
}

fn config(sim: &Sim, markdown: &Backend) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
token = "admin-secret"

[[upstream]]
name = "sim"
servers = [{{ addr = "{sim}", max_inflight = 4 }}]

# One slot and one place in the queue: a third request is told 503 with Retry-After.
[[upstream]]
name = "busy"
servers = [{{ addr = "{sim}", max_inflight = 1 }}]
queue = {{ max = 1, timeout = "60s" }}

[[upstream]]
name = "markdown"
servers = [{{ addr = "{markdown}" }}]

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  exact = "/"
  page = "chat"

  [[server.location]]
  prefix = "/v1/"
  models = {{ glm = "sim", markdown = "markdown", busy = "busy" }}
  auth = "api_key"
  client_max_body_size = "8m"
  images = {{ resize = {{ max_pixels = 1048576 }} }}

[[api_key]]
name = "good"
sha256 = "{good}"

[[api_key]]
name = "limited"
sha256 = "{limited}"
rate = "1r/m"
"#,
        sim = sim.addr,
        markdown = markdown.authority(),
        good = sha256_hex("ig-browser-good"),
        limited = sha256_hex("ig-browser-limited"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and playwright-core; scripts/test.sh provisions them and runs it"]
async fn the_question_page_and_the_dashboard_work_in_a_real_browser() {
    let model = LatencyModel {
        prefill_base_ms: 150.0,
        prefill_per_image_token_ms: 0.05,
        decode_ms: 50.0,
        default_max_tokens: 60,
        ..LatencyModel::default()
    };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let markdown = markdown_model().await;
    let gw = TestGateway::start(&config(&sim, &markdown)).await;
    let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();

    // A 3000x2000 photo-like PNG, which the page scales down to the API's 1,048,576 pixels.
    let photo = image::RgbImage::from_fn(3000, 2000, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, 90]));
    let photo_path = gw.path("photo.png");
    photo.save(&photo_path).unwrap();
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let node = std::env::var("INFERGATE_TEST_NODE").unwrap_or_else(|_| "node".into());
    let chromium = std::env::var("INFERGATE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/pages.mjs");
    let run = tokio::process::Command::new(node)
        .arg(script)
        .env("CHROMIUM", chromium)
        .env("CHAT_URL", format!("http://{}/", gw.addr("127.0.0.1:0")))
        .env("ADMIN_URL", format!("http://{admin}/"))
        .env("ADMIN_TOKEN", "admin-secret")
        .env("SIM_URL", format!("http://{}", sim.addr))
        .env("SIM_SERVER", sim.addr.to_string())
        .env("KEY_GOOD", "ig-browser-good")
        .env("KEY_LIMITED", "ig-browser-limited")
        .env("PHOTO", &photo_path)
        .env("SHOTS", &shots)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run).await.expect("the browser run ends").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tests/browser/pages.mjs failed:\n{stdout}\n{stderr}");
    println!("{stdout}");
    assert!(sim.stats()["aborted"].as_u64().unwrap() >= 1, "the sim saw the Stop");
}
