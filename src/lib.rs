//! infergate: one binary that does what an nginx front end does for a self-hosted model service, and
//! does it for model serving. The modules form layers that import one way (docs/ARCHITECTURE.md,
//! "Layers", checked by tests/it/layers.rs): leaves (`client`, `wire`, `error`, ...), `config`,
//! services (`upstream`, `policy`, `accounting`, ...), handlers (`proxy`, `route`, ...), `runtime`
//! (the compiled config), `pipeline` (a request's phases) and `server` (connections, reload).
//! Only what the binary and the tests use is public.

#![warn(unreachable_pub)]

mod accounting;
pub mod admin;
mod ai;
mod boxed;
mod canary;
pub mod cli;
mod client;
mod compress;
pub mod config;
mod cost;
mod discovery;
mod error;
mod error_log;
#[cfg(test)]
mod fuzzing;
mod glob;
mod images;
mod keys;
mod metrics;
mod pages;
mod pem;
mod pipeline;
mod policy;
mod proxy;
mod request_id;
mod route;
pub mod runtime;
pub mod server;
mod shared;
pub mod sim;
mod static_files;
mod template;
mod tls;
mod upstream;
mod uri;
mod wire;
