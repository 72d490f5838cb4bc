//! infergate: one binary that does what an nginx front end does for a self-hosted model service, and
//! does it for model serving. The modules follow the request's data path (ARCHITECTURE.md §3):
//! `server` accepts and serves connections, `pipeline` runs a request's phases, `route` picks the
//! location, `proxy` and `upstream` talk to backends; `config` and `runtime` form the control path.

pub mod accounting;
pub mod admin;
pub mod ai;
pub mod boxed;
pub mod canary;
pub mod client;
pub mod compress;
pub mod config;
pub mod error;
pub mod error_log;
#[cfg(test)]
mod fuzzing;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod request_id;
pub mod route;
pub mod runtime;
pub mod server;
pub mod sim;
pub mod static_files;
pub mod template;
pub mod tls;
pub mod upstream;
pub mod uri;
pub mod wire;
