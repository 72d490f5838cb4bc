//! infergate: one binary that does what an nginx front end does for a self-hosted model service, and
//! does it for model serving. The modules follow the request's data path (ARCHITECTURE.md §3):
//! `server` accepts and serves connections, `pipeline` runs a request's phases, `route` picks the
//! location, `proxy` and `upstream` talk to backends; `config` and `runtime` form the control path.

#![warn(unreachable_pub)]

pub mod accounting;
pub mod admin;
mod ai;
mod boxed;
mod canary;
mod client;
mod compress;
pub mod config;
mod error;
pub mod error_log;
#[cfg(test)]
mod fuzzing;
mod metrics;
mod pipeline;
pub mod policy;
mod proxy;
mod request_id;
mod route;
pub mod runtime;
pub mod server;
pub mod sim;
mod static_files;
mod template;
mod tls;
pub mod upstream;
mod uri;
mod wire;
