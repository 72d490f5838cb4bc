//! Integration tests: the gateway in-process on 127.0.0.1 port 0 with real backends, clients and TLS.

mod support;

mod access_log;
mod admin;
mod admission;
mod browser;
mod canary;
mod cli;
mod client_wire;
mod compression;
mod deploy;
mod discovery;
mod edge;
mod health;
mod hostile;
mod images;
mod keys;
mod layers;
mod models;
mod pages;
mod proxy;
mod ratelimit;
mod reload;
mod seed;
mod shared;
mod sim;
mod static_files;
mod streaming;
mod timeouts;
mod tls;
mod upstream_tls;
mod upstream_wire;
mod websocket;
