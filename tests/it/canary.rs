//! Canary releases: a header or cookie picks the canary, a weighted share of the rest goes to it,
//! and with `sticky` a client keeps its version.

use crate::support::*;
use http::{Request, Response};

async fn named(name: &'static str) -> Backend {
    Backend::start(move |_| async move { Response::new(full(name)) }).await
}

fn config(stable: &Backend, canary: &Backend, weight: u32, sticky: bool) -> String {
    format!(
        r#"
[[upstream]]
name = "stable"
servers = [{{ addr = "{}" }}]

[[upstream]]
name = "canary"
servers = [{{ addr = "{}" }}]

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "stable"
  canary = [{{ upstream = "canary", weight = {weight}, header = "X-Model-Version: canary", cookie = "model=canary" }}]
  sticky = {sticky}
"#,
        stable.authority(),
        canary.authority()
    )
}

async fn version(
    client: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    header: Option<(&str, &str)>,
) -> String {
    let mut request = Request::get("/v1/chat/completions").header("host", "localhost");
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    send(client, request.body(full("")).unwrap()).await.2
}

#[tokio::test]
async fn a_header_or_cookie_picks_the_canary() {
    let (stable, canary) = (named("stable").await, named("canary").await);
    let gw = TestGateway::start(&config(&stable, &canary, 0, false)).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    for _ in 0..5 {
        assert_eq!(version(&mut client, None).await, "stable", "weight 0: no share");
    }
    assert_eq!(version(&mut client, Some(("x-model-version", "canary"))).await, "canary");
    assert_eq!(version(&mut client, Some(("cookie", "a=1; model=canary"))).await, "canary");
    assert_eq!(version(&mut client, Some(("x-model-version", "stable"))).await, "stable");
}

#[tokio::test]
async fn the_weight_is_a_share_and_sticky_keeps_a_client_on_its_side() {
    let (stable, canary) = (named("stable").await, named("canary").await);
    let gw = TestGateway::start(&config(&stable, &canary, 30, false)).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let mut to_canary = 0;
    for _ in 0..400 {
        to_canary += usize::from(version(&mut client, None).await == "canary");
    }
    // 30 % of 400 = 120, standard deviation ~9.2: ±60 is more than six of them (odds below 1e-9).
    assert!((60..=180).contains(&to_canary), "{to_canary} of 400 went to the canary");

    let gw = TestGateway::start(&config(&stable, &canary, 50, true)).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let first = version(&mut client, None).await;
    for _ in 0..20 {
        assert_eq!(version(&mut client, None).await, first, "a sticky client keeps its version");
    }
}

fn balanced(a: &Backend, b: &Backend, upstream_extra: &str, weights: (u32, u32)) -> String {
    format!(
        r#"
[[upstream]]
name = "pair"
servers = [{{ addr = "{}", weight = {} }}, {{ addr = "{}", weight = {} }}]
{upstream_extra}

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "pair"
"#,
        a.authority(),
        weights.0,
        b.authority(),
        weights.1
    )
}

#[tokio::test]
async fn weights_share_round_robin_like_nginx() {
    let (a, b) = (named("a").await, named("b").await);
    let gw = TestGateway::start(&balanced(&a, &b, "", (3, 1))).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let mut picks = String::new();
    for _ in 0..8 {
        picks.push_str(&version(&mut client, None).await[..1]);
    }
    assert_eq!(picks, "aabaaaba");
}

#[tokio::test]
async fn hash_keeps_a_session_on_one_server() {
    let (a, b) = (named("a").await, named("b").await);
    let gw = TestGateway::start(&balanced(&a, &b, "balance = \"hash\"\nhash_key = \"header:X-Session\"", (1, 1))).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let mut homes = std::collections::HashSet::new();
    for session in 0..20 {
        let id = format!("session-{session}");
        let home = version(&mut client, Some(("x-session", &id))).await;
        for _ in 0..3 {
            assert_eq!(version(&mut client, Some(("x-session", &id))).await, home, "{id} moved");
        }
        homes.insert(home);
    }
    assert_eq!(homes.len(), 2, "sessions spread over both servers");
}
