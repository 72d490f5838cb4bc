//! The error log (nginx's `error_log`): tracing's output, to stderr or to a file that SIGUSR1 reopens
//! after rotation, from the configured level (`RUST_LOG` overrides it). Set once at start.

use crate::config::ErrorLogConfig;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The error log file, when there is one.
static FILE: OnceLock<LogFile> = OnceLock::new();

/// An appended file, reopened on demand; each event is one write.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

/// A writer handing events to the log file.
pub(crate) struct FileWriter;

impl Write for FileWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match FILE.get() {
            Some(log) => log.file.lock().unwrap_or_else(|e| e.into_inner()).write(bytes),
            None => std::io::stderr().write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the global subscriber: `settings` (from `[http] error_log`, paths relative to `dir`), or
/// stderr at `info`. A file that cannot be opened falls back to stderr, saying so.
pub(crate) fn init(settings: Option<&ErrorLogConfig>, dir: &Path) {
    let level = settings.map_or("info", |s| s.level.get_ref().as_str()).to_string();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let mut failure = None;
    if let Some(path) = settings.and_then(|s| s.path.as_ref()) {
        let path = dir.join(path);
        match open_append(&path) {
            Ok(file) => {
                let _ = FILE.set(LogFile { path, file: Mutex::new(file) });
            }
            Err(error) => failure = Some(format!("cannot open the error log {}: {error}", path.display())),
        }
    }
    if FILE.get().is_some() {
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(|| FileWriter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    if let Some(message) = failure {
        tracing::error!("{message}; logging to stderr");
    }
}

/// Reopens the error log file, if there is one (SIGUSR1).
pub(crate) fn reopen() {
    if let Some(log) = FILE.get() {
        match open_append(&log.path) {
            Ok(file) => *log.file.lock().unwrap_or_else(|e| e.into_inner()) = file,
            Err(error) => tracing::error!(path = %log.path.display(), %error, "cannot reopen the error log"),
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}
