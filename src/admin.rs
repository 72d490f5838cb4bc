//! The admin API, on a listener of its own (`[admin]`, default 127.0.0.1:9901): Prometheus metrics,
//! a status snapshot, reload, and draining servers by hand. With a `token`, every request must carry
//! `Authorization: Bearer TOKEN`; without one, only a loopback address may be bound (checked at load).
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | the dashboard (`pages`; no token needed for the document, its reads send it) |
//! | `GET /metrics` | the exposition (OpenMetrics text) |
//! | `GET /status` | config version and load time, uptime, upstreams with their servers |
//! | `POST /reload` | as SIGHUP: the new version, or 400 with the errors (`FILE:LINE:COL: ...`) |
//! | `POST /upstreams/NAME/servers/ADDR/drain` | takes the server out of rotation; its streams get `drain_timeout` |
//! | `POST /upstreams/NAME/servers/ADDR/undrain` | puts it back (a server with `drain = true` in the config stays out) |
//! | `GET /keys` | each API key's name and settings, never a secret or digest |
//! | `POST /keys/reload` | as `POST /reload` (re-reads the config and its keys file) |
//! | `GET /usage` | each key's requests and tokens by model, since start and over the last hour |
//!
//! A drain by hand lasts across reloads, until undrained.

use crate::config::parse_listen;
use crate::pages::Page;
use crate::runtime::Runtime;
use crate::server::Gateway;
use aws_lc_rs::constant_time::verify_slices_are_equal;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use tokio::net::TcpListener;

/// Binds the admin listener of the gateway's config and serves it until the gateway shuts down.
/// Returns the bound address, or `None` when `[admin] enabled = false`.
pub async fn start(gateway: Arc<Gateway>) -> std::io::Result<Option<SocketAddr>> {
    let settings = gateway.runtime().admin.clone();
    if !settings.enabled {
        return Ok(None);
    }
    let addr = parse_listen(settings.listen.get_ref())
        .ok_or_else(|| std::io::Error::other(format!("invalid admin address {}", settings.listen.get_ref())))?;
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let token = settings.token.filter(|t| !t.is_empty()).map(|t| Arc::<str>::from(format!("Bearer {t}")));
    let mut shutdown = gateway.shutdown_signal();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "admin listener cannot accept");
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let gateway = gateway.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let gateway = gateway.clone();
                    let token = token.clone();
                    async move { Ok::<_, Infallible>(handle(&gateway, token.as_deref(), request).await) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(Some(bound))
}

async fn handle(gateway: &Arc<Gateway>, token: Option<&str>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let runtime = gateway.runtime();
    // The dashboard's document holds no data: it reads the API below, with the token.
    if request.uri().path() == "/" {
        return Page::dashboard().serve(request.method()).map(Full::new);
    }
    if let Some(expected) = token {
        let given = request.headers().get(header::AUTHORIZATION).map_or(&b""[..], HeaderValue::as_bytes);
        if verify_slices_are_equal(given, expected.as_bytes()).is_err() {
            runtime.metrics.reject("auth");
            let mut response = reply(StatusCode::UNAUTHORIZED, json!({"error": "a bearer token is required"}));
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    let path: Vec<&str> = request.uri().path().split('/').filter(|s| !s.is_empty()).collect();
    match (request.method(), path.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            let mut response = Response::new(Full::new(Bytes::from(runtime.metrics.encode(&runtime.state_metrics()))));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        (&Method::GET, ["status"]) => reply(StatusCode::OK, status(gateway)),
        (&Method::GET, ["keys"]) => reply(StatusCode::OK, keys(&runtime)),
        (&Method::GET, ["usage"]) => reply(StatusCode::OK, runtime.keys.usage().report()),
        (&Method::POST, ["reload"] | ["keys", "reload"]) => match gateway.reload().await {
            Ok(version) => reply(StatusCode::OK, json!({"version": version})),
            Err(errors) => {
                let errors: Vec<String> = errors.0.iter().map(|e| format!("{}: {}", e.location, e.message)).collect();
                reply(StatusCode::BAD_REQUEST, json!({"errors": errors}))
            }
        },
        (&Method::POST, ["upstreams", name, "servers", addr, action @ ("drain" | "undrain")]) => {
            let Some(upstream) = runtime.upstreams.get(*name) else {
                return reply(StatusCode::NOT_FOUND, json!({"error": format!("no upstream `{name}`")}));
            };
            let Some(server) = upstream.servers.iter().find(|s| s.authority.as_str() == *addr) else {
                return reply(
                    StatusCode::NOT_FOUND,
                    json!({"error": format!("upstream `{name}` has no server {addr}")}),
                );
            };
            server.load.drain_by_hand(*action == "drain", runtime.http.drain_timeout.0);
            reply(StatusCode::OK, json!({"upstream": name, "server": addr, "draining": server.is_draining()}))
        }
        (_, ["metrics" | "status" | "keys" | "usage"])
        | (_, ["reload"] | ["keys", "reload"])
        | (_, ["upstreams", _, "servers", _, "drain" | "undrain"]) => {
            reply(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "method not allowed"}))
        }
        _ => reply(StatusCode::NOT_FOUND, json!({"error": "no such admin endpoint"})),
    }
}

/// The `/keys` document: each API key's name and settings, never its secret or digest.
fn keys(runtime: &Runtime) -> Value {
    let now = std::time::SystemTime::now();
    let keys: Vec<Value> = runtime
        .keys
        .keys()
        .iter()
        .map(|key| {
            json!({
                "name": key.name,
                "team": key.team,
                "models": key.models,
                "priority": key.priority,
                "disabled": key.disabled,
                "expired": key.expires.is_some_and(|expires| now >= expires),
                "expires": key.expires.and_then(|e| e.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
            })
        })
        .collect();
    json!({ "keys": keys })
}

/// The `/status` document.
fn status(gateway: &Gateway) -> Value {
    let runtime = gateway.runtime();
    let mut upstreams: Vec<_> = runtime.upstreams.values().collect();
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    let upstreams: Vec<Value> = upstreams
        .into_iter()
        .map(|upstream| {
            let admitted = upstream.admission.as_ref().map(|a| a.inflight());
            let held = upstream.admission.as_ref().filter(|a| a.weighs_tokens()).map(|a| a.inflight_tokens());
            let servers: Vec<Value> = upstream
                .servers
                .iter()
                .enumerate()
                .map(|(index, server)| {
                    let in_flight = admitted.as_ref().map_or_else(|| server.load.inflight(), |counts| counts[index]);
                    json!({
                        "addr": server.authority.as_str(),
                        "healthy": server.health.is_up(),
                        "draining": server.is_draining(),
                        "in_flight": in_flight,
                        "max_inflight": server.max_inflight,
                        "in_flight_tokens": held.as_ref().map(|tokens| tokens[index]),
                        "max_inflight_tokens": server.max_inflight_tokens,
                    })
                })
                .collect();
            json!({
                "name": &*upstream.name,
                "queue": upstream.admission.as_ref().map(|a| a.queued()),
                "servers": servers,
            })
        })
        .collect();
    json!({
        "config_version": runtime.version,
        "config_loaded_at": runtime.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "uptime_seconds": gateway.started.elapsed().as_secs(),
        "upstreams": upstreams,
        "redis": runtime.shared.as_ref().map(|store| store.status()),
    })
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
