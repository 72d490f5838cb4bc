//! Process signals, as nginx users expect them: SIGHUP reloads the config, SIGUSR1 reopens the log
//! files (after rotation), SIGTERM and SIGINT drain and exit.

use super::Gateway;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// Serves until SIGTERM or SIGINT, reloading on every SIGHUP; then drains. Returns whether the drain
/// finished within the deadline.
pub async fn run_until_stopped(gateway: Arc<Gateway>) -> std::io::Result<bool> {
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut reopen = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => match gateway.reload().await {
                Ok(version) => tracing::info!(version, "config reloaded"),
                Err(errors) => tracing::error!("config reload failed, the running config stays:\n{errors}"),
            },
            _ = reopen.recv() => {
                crate::error_log::reopen();
                gateway.runtime().access_logs.reopen();
                tracing::info!("log files reopened");
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("shutting down: no new connections, draining requests in flight");
    Ok(gateway.shutdown().await)
}
