//! The `infergate` command line: `run` (the default), `check`, `sim`, `demo` and `key new`. It lives
//! in the library, not in `src/main.rs`, so that the futures it awaits are compiled once, here: a
//! binary crate compiles again every generic and `async` body it reaches in its dependencies (the
//! release build's binary took 23 s of a 233 s first build for that alone).

use crate::config::Source;
use crate::runtime::Runtime;
use crate::server::signals::Signals;
use crate::server::workers::Workers;
use crate::server::{ConfigOrigin, Gateway};
use crate::sim::{Sim, SimOptions};
use crate::{admin, error_log};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "infergate", version, about = "A gateway for self-hosted AI model services")]
struct Cli {
    /// Config file (TOML). Default: ./infergate.toml if present, else the built-in default that
    /// listens on 127.0.0.1:8000 and proxies to 127.0.0.1:8080.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic (what a bare `infergate` does). SIGHUP reloads, SIGTERM drains and exits.
    Run,
    /// Check the config like `nginx -t`: exit 0 when valid, else print every error and exit 1.
    Check,
    /// Run a simulated vision-language model server (OpenAI-compatible) for trying and testing.
    Sim(SimOptions),
    /// Start the simulated model and the gateway in front of it (examples/demo.toml), ready to curl.
    Demo(DemoOptions),
    /// API keys: `key new NAME` prints a new key once, and the `[[api_key]]` table to add.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Make a key for NAME: the secret is printed once; the config keeps only its SHA-256.
    New {
        /// The key's name (unique; shown in logs and metrics).
        name: String,
    },
}

#[derive(clap::Args)]
struct DemoOptions {
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Where the simulated model listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    sim_listen: SocketAddr,
    /// Where the admin API (metrics, status) listens.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin_listen: SocketAddr,
}

/// The demo config, from the working copy when run from the repository, else the copy built in.
const DEMO_CONFIG: &str = include_str!("../examples/demo.toml");

/// Parses the arguments and runs the command they name; what `src/main.rs` calls.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let origin = match cli.config {
        Some(path) => ConfigOrigin::File(path),
        None if Path::new("infergate.toml").exists() => ConfigOrigin::File("infergate.toml".into()),
        None => ConfigOrigin::Embedded,
    };
    let command = cli.command.unwrap_or(Command::Run);
    // Only a running gateway logs where its config says; errors in the config are reported later.
    let source = matches!(command, Command::Run).then(|| origin.read().ok()).flatten();
    let config = source.as_ref().and_then(|source| crate::config::load(source).ok());
    let dir = source.as_ref().map_or(PathBuf::from("."), |s| s.dir.clone());
    error_log::init(config.as_ref().and_then(|c| c.http.error_log.as_ref()), &dir);
    let result = match command {
        Command::Check => check(&origin),
        Command::Run => run(origin, config),
        Command::Sim(options) => sim(options),
        Command::Demo(options) => demo(options),
        Command::Key(KeyCommand::New { name }) => new_key(&name),
    };
    result.unwrap_or_else(|e| {
        eprintln!("infergate: {e:#}");
        ExitCode::FAILURE
    })
}

fn new_key(name: &str) -> anyhow::Result<ExitCode> {
    let (secret, table) = crate::keys::new_key(name).map_err(anyhow::Error::msg)?;
    println!("API key for {name:?} (shown once; the gateway keeps only its SHA-256):\n{secret}\n");
    println!("Add to the config, or to the file its [http] api_keys_file names, then reload:\n{table}");
    Ok(ExitCode::SUCCESS)
}

fn check(origin: &ConfigOrigin) -> anyhow::Result<ExitCode> {
    // TLS material is loaded too, as `nginx -t` does; the runtime needs tokio for nothing here.
    let loaded = origin.read().and_then(|source: Source| Runtime::load(&source, None).map(|_| source));
    match loaded {
        Ok(source) => {
            println!("{}: configuration is valid", source.name);
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            println!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn sim(options: SimOptions) -> anyhow::Result<ExitCode> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let sim = Sim::start_with(options.clone(), true)
            .await
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        eprintln!(
            "infergate sim: model {} on http://{} ({} slots)",
            options.model_name, sim.addr, options.latency.slots
        );
        tokio::signal::ctrl_c().await.context("cannot wait for Ctrl-C")?;
        Ok(ExitCode::SUCCESS)
    })
}

fn demo(options: DemoOptions) -> anyhow::Result<ExitCode> {
    let control =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let workers = Workers::start(0).context("cannot start worker threads")?;
    control.block_on(async move {
        let signals = Signals::install().context("cannot install signal handlers")?;
        let sim_options = SimOptions { listen: options.sim_listen, ..SimOptions::default() };
        let sim = Sim::start(sim_options).await.with_context(|| format!("cannot start the simulated model on {}", options.sim_listen))?;
        let (name, template) = match std::fs::read_to_string("examples/demo.toml") {
            Ok(text) => ("examples/demo.toml".to_string(), text),
            Err(_) => ("<built-in examples/demo.toml>".to_string(), DEMO_CONFIG.to_string()),
        };
        let text = template.replace("127.0.0.1:8080", &sim.addr.to_string()).replace("127.0.0.1:8000", &options.listen.to_string())
            + &format!("\n[admin]\nlisten = \"{}\"\n", options.admin_listen);
        let gateway = match Gateway::start_on(ConfigOrigin::Text { name, text }, workers.handles()).await {
            Ok(gateway) => gateway,
            Err(errors) => {
                eprintln!("{errors}");
                return Ok(ExitCode::FAILURE);
            }
        };
        let gateway_addr = gateway.bound_addrs().into_values().next().context("the demo config has no listener")?;
        let admin_addr = admin::start(gateway.clone()).await.context("cannot start the admin API")?;
        eprintln!("infergate demo: open http://{gateway_addr}/ and ask about an image (the gateway's page)");
        if let Some(addr) = admin_addr {
            eprintln!("infergate demo: the live dashboard is on http://{addr}/");
        }
        eprintln!("infergate demo: simulated model (infergate sim) on http://{}", sim.addr);
        eprintln!("infergate demo: gateway on http://{gateway_addr} -> model");
        eprintln!("infergate demo: or stream an answer with curl:");
        eprintln!(
            "  curl -N http://{gateway_addr}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\": \"glm-4v-flash\", \"stream\": true, \"messages\": [{{\"role\": \"user\", \"content\": \"What is in this image?\"}}]}}'"
        );
        if let Some(addr) = admin_addr {
            eprintln!("infergate demo: metrics on http://{addr}/metrics, status on http://{addr}/status");
        }
        eprintln!("infergate demo: Ctrl-C stops both");
        let drained = signals.run_until_stopped(gateway.clone()).await;
        if !drained {
            eprintln!("infergate: drain deadline passed with requests still open; exiting");
        }
        // The last requests' lines, still in the workers' buffers.
        gateway.runtime().ledger.access_logs.flush();
        Ok(ExitCode::SUCCESS)
    })
}

fn run(origin: ConfigOrigin, config: Option<crate::config::Config>) -> anyhow::Result<ExitCode> {
    if let ConfigOrigin::Embedded = origin {
        eprintln!("infergate: no --config and no ./infergate.toml: using the built-in default");
    }
    // The worker count is needed before the gateway starts; errors are reported by the start below.
    let worker_count = config.map_or(0, |c| c.http.workers);
    let workers = Workers::start(worker_count).context("cannot start worker threads")?;
    // Signals and reloads run on the main thread; traffic on the workers.
    let control =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    control.block_on(async move {
        let signals = Signals::install().context("cannot install signal handlers")?;
        let gateway = match Gateway::start_on(origin, workers.handles()).await {
            Ok(gateway) => gateway,
            Err(errors) => {
                eprintln!("{errors}");
                return Ok(ExitCode::FAILURE);
            }
        };
        match admin::start(gateway.clone()).await {
            Ok(Some(addr)) => eprintln!("infergate: admin API on http://{addr} (/metrics, /status)"),
            Ok(None) => {}
            Err(error) => {
                eprintln!("infergate: cannot start the admin API: {error}");
                return Ok(ExitCode::FAILURE);
            }
        }
        let current = gateway.runtime();
        let mut addrs: Vec<_> = gateway.bound_addrs().into_values().collect();
        addrs.sort();
        for addr in addrs {
            eprintln!("infergate: listening on {addr}");
        }
        let mut upstreams: Vec<_> = current.upstreams.values().collect();
        upstreams.sort_by(|a, b| a.name.cmp(&b.name));
        for upstream in upstreams {
            let servers: Vec<_> = upstream.servers.iter().map(|s| s.authority.as_str()).collect();
            eprintln!("infergate: upstream {} -> {}", upstream.name, servers.join(", "));
        }
        drop(current);
        let drained = signals.run_until_stopped(gateway.clone()).await;
        if !drained {
            eprintln!("infergate: drain deadline passed with requests still open; exiting");
        }
        // The last requests' lines, still in the workers' buffers.
        gateway.runtime().ledger.access_logs.flush();
        Ok(ExitCode::SUCCESS)
    })
}
