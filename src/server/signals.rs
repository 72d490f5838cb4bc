//! Process signals, as nginx users expect them: SIGHUP reloads the config, SIGUSR1 reopens the log
//! files (after rotation), SIGTERM and SIGINT drain and exit.

use super::Gateway;
use std::sync::Arc;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals the gateway answers, caught from the moment this exists: installed before the
/// gateway says it listens, so a supervisor's SIGHUP or SIGUSR1 right after never meets the default
/// action (which ends the process).
pub struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
    reopen: Signal,
}

impl Signals {
    /// Catches SIGHUP, SIGTERM, SIGINT and SIGUSR1 from now on; needs a tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            reopen: signal(SignalKind::user_defined1())?,
        })
    }

    /// Serves until SIGTERM or SIGINT, reloading on every SIGHUP; then drains. Returns whether the
    /// drain finished within the deadline.
    pub async fn run_until_stopped(self, gateway: Arc<Gateway>) -> bool {
        let Signals { mut hangup, mut terminate, mut interrupt, mut reopen } = self;
        loop {
            tokio::select! {
                _ = hangup.recv() => match gateway.reload().await {
                    Ok(version) => tracing::info!(version, "config reloaded"),
                    Err(errors) => tracing::error!("config reload failed, the running config stays:\n{errors}"),
                },
                _ = reopen.recv() => {
                    let runtime = gateway.runtime();
                    // Reopening waits for each log's writer thread.
                    let reopened = tokio::task::spawn_blocking(move || {
                        crate::error_log::reopen();
                        runtime.ledger.access_logs.reopen();
                    });
                    match reopened.await {
                        Ok(()) => tracing::info!("log files reopened"),
                        Err(error) => tracing::error!(%error, "reopening the log files failed"),
                    }
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        tracing::info!("shutting down: no new connections, draining requests in flight");
        gateway.shutdown().await
    }
}
