//! Access logs: nginx's `main` and `combined` formats, custom formats with nginx variables, and JSON
//! lines. A request's line is formatted into its worker's buffer, which the file's writer thread
//! writes out in batches (`LogWriter`): a request never waits on the disk. The file is reopened on
//! SIGUSR1, as nginx does for log rotation. The usage log (`[http] usage_log`)
//! is written the same way: one JSON line per request made with an API key that reached a model.

use super::{BodyEnd, LoggedRequest, Record};
use crate::config::{AccessLogSetting, Config, ConfigError, Source};
use crate::metrics::{shard, Padded, SHARDS};
use crate::template::{self, Part};
use http::HeaderName;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// nginx's `combined`, its built-in default.
pub(crate) const COMBINED: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent""#;
/// The seed's (and nginx's documented) `main`: `combined` plus `X-Forwarded-For`.
pub(crate) const MAIN: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" "$http_x_forwarded_for""#;

/// A variable of a log format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    RemoteAddr,
    RemoteUser,
    TimeLocal,
    TimeIso8601,
    Msec,
    Request,
    RequestMethod,
    RequestUri,
    Uri,
    Args,
    ServerProtocol,
    Scheme,
    Host,
    Status,
    BodyBytesSent,
    RequestTime,
    RequestId,
    UpstreamAddr,
    UpstreamStatus,
    UpstreamResponseTime,
    UpstreamHeaderTime,
    /// How the response ended: `complete`, `client_closed`, `timeout` or `error` (infergate's own).
    ResponseEnd,
    /// The name of the request's API key.
    ApiKeyName,
    /// The model the request named (read for requests made with an API key).
    Model,
    /// Prompt tokens: the backend's usage, else the gateway's estimate.
    PromptTokens,
    /// Completion tokens: the backend's usage, else the events the client received.
    CompletionTokens,
    /// Image tokens among the prompt's, as the gateway estimates them.
    ImageTokens,
    /// `$http_NAME`: a request header.
    Header(HeaderName),
}

const VARIABLES: [(&str, Var); 27] = [
    ("remote_addr", Var::RemoteAddr),
    ("remote_user", Var::RemoteUser),
    ("time_local", Var::TimeLocal),
    ("time_iso8601", Var::TimeIso8601),
    ("msec", Var::Msec),
    ("request", Var::Request),
    ("request_method", Var::RequestMethod),
    ("request_uri", Var::RequestUri),
    ("uri", Var::Uri),
    ("args", Var::Args),
    ("server_protocol", Var::ServerProtocol),
    ("scheme", Var::Scheme),
    ("host", Var::Host),
    ("status", Var::Status),
    ("body_bytes_sent", Var::BodyBytesSent),
    ("request_time", Var::RequestTime),
    ("request_id", Var::RequestId),
    ("upstream_addr", Var::UpstreamAddr),
    ("upstream_status", Var::UpstreamStatus),
    ("upstream_response_time", Var::UpstreamResponseTime),
    ("upstream_header_time", Var::UpstreamHeaderTime),
    ("response_end", Var::ResponseEnd),
    ("api_key_name", Var::ApiKeyName),
    ("model", Var::Model),
    ("prompt_tokens", Var::PromptTokens),
    ("completion_tokens", Var::CompletionTokens),
    ("image_tokens", Var::ImageTokens),
];

/// A compiled log format.
#[derive(Debug, Clone)]
pub(crate) struct LogFormat(Shape);

#[derive(Debug, Clone)]
enum Shape {
    /// Text with `$variables`, as nginx's `log_format`.
    Text(Vec<Part<Var>>),
    /// One JSON object per line with every field.
    Json,
}

impl LogFormat {
    /// Compiles `text`; an unknown variable is an error naming the known ones.
    pub(crate) fn parse(text: &str) -> Result<LogFormat, String> {
        Ok(LogFormat(Shape::Text(template::split(text, variable)?)))
    }

    /// A format by name: `main`, `combined`, `json`, or one of `custom` (`[http] log_format`).
    pub(crate) fn named(name: &str, custom: &BTreeMap<String, String>) -> Result<LogFormat, String> {
        match (name, custom.get(name)) {
            (_, Some(text)) => LogFormat::parse(text),
            ("main", None) => LogFormat::parse(MAIN),
            ("combined", None) => LogFormat::parse(COMBINED),
            ("json", None) => Ok(LogFormat(Shape::Json)),
            _ => {
                let mut known: Vec<&str> = vec!["main", "combined", "json"];
                known.extend(custom.keys().map(String::as_str));
                Err(format!("unknown log format `{name}` (known: {})", known.join(", ")))
            }
        }
    }

    /// The request headers this format reads, which the request's record must keep.
    pub(crate) fn headers(&self) -> Vec<HeaderName> {
        match &self.0 {
            Shape::Json => JSON_HEADERS.iter().map(|(_, name)| HeaderName::from_static(name)).collect(),
            Shape::Text(parts) => parts
                .iter()
                .filter_map(|part| match part {
                    Part::Var(Var::Header(name)) => Some(name.clone()),
                    _ => None,
                })
                .collect(),
        }
    }

    /// Appends the record as one line, without the newline, to `line`.
    pub(crate) fn format(&self, line: &mut String, record: &Record, request: &LoggedRequest) {
        match &self.0 {
            Shape::Json => line.push_str(&json_line(record, request)),
            Shape::Text(parts) => {
                for part in parts {
                    match part {
                        Part::Text(text) => line.push_str(text),
                        Part::Var(var) => push_var(line, var, record, request),
                    }
                }
            }
        }
    }
}

fn variable(name: &str) -> Result<Var, String> {
    if let Some(header) = name.strip_prefix("http_") {
        return HeaderName::from_bytes(header.replace('_', "-").as_bytes())
            .map(Var::Header)
            .map_err(|_| format!("invalid header variable `${name}`"));
    }
    VARIABLES.iter().find(|(known, _)| *known == name).map(|(_, var)| var.clone()).ok_or_else(|| {
        let known: Vec<&str> = VARIABLES.iter().map(|(name, _)| *name).collect();
        format!("unknown log variable `${name}` (known: {}, $http_NAME)", known.join(", "))
    })
}

/// Request headers in JSON lines, by field name.
const JSON_HEADERS: [(&str, &str); 3] =
    [("http_referer", "referer"), ("http_user_agent", "user-agent"), ("http_x_forwarded_for", "x-forwarded-for")];

fn push_var(line: &mut String, var: &Var, record: &Record, request: &LoggedRequest) {
    use std::fmt::Write as _;
    let dash = |line: &mut String, text: &str| line.push_str(if text.is_empty() { "-" } else { text });
    match var {
        Var::RemoteAddr => {
            let _ = write!(line, "{}", request.client_ip);
        }
        Var::RemoteUser => line.push('-'),
        Var::TimeLocal => push_time_local(line, record.ended_at),
        Var::TimeIso8601 => line.push_str(&time_iso8601(record.ended_at)),
        Var::Msec => {
            let since = record.ended_at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let _ = write!(line, "{}.{:03}", since.as_secs(), since.subsec_millis());
        }
        Var::Request => {
            let _ = write!(line, "{} {} {}", request.method, request.request_uri(), request.protocol);
        }
        Var::RequestMethod => line.push_str(request.method.as_str()),
        Var::RequestUri => line.push_str(request.request_uri()),
        Var::Uri => line.push_str(request.uri.path()),
        Var::Args => line.push_str(request.uri.query().unwrap_or("")),
        Var::ServerProtocol => line.push_str(request.protocol),
        Var::Scheme => line.push_str(if request.https { "https" } else { "http" }),
        Var::Host => dash(line, request.host()),
        Var::Status => {
            let _ = write!(line, "{}", record.status);
        }
        Var::BodyBytesSent => {
            let _ = write!(line, "{}", record.body_bytes);
        }
        Var::RequestTime => push_seconds(line, Some(record.duration)),
        Var::RequestId => line.push_str(request.request_id.to_str().unwrap_or("-")),
        Var::UpstreamAddr => dash(line, record.upstream_addr().unwrap_or("")),
        Var::UpstreamStatus => match &record.upstream {
            Some(upstream) => {
                let _ = write!(line, "{}", upstream.status);
            }
            None => line.push('-'),
        },
        Var::UpstreamResponseTime => push_seconds(line, record.upstream_response_time()),
        Var::UpstreamHeaderTime => push_seconds(line, record.upstream.as_ref().map(|u| u.header_time)),
        Var::ResponseEnd => line.push_str(record.end.as_str()),
        Var::ApiKeyName => dash(line, record.key.as_ref().map_or("", |key| key.name.as_str())),
        Var::Model => dash(line, record.reading.as_ref().map_or("", |reading| reading.model.as_str())),
        Var::PromptTokens => push_count(line, record.reading.as_ref().map(|r| r.spend.prompt)),
        Var::CompletionTokens => push_count(line, record.reading.as_ref().map(|r| r.spend.completion)),
        Var::ImageTokens => push_count(line, record.reading.as_ref().map(|r| r.spend.image)),
        Var::Header(name) => dash(line, request.header(name).unwrap_or("")),
    }
}

/// A count, or `-`.
fn push_count(line: &mut String, count: Option<u64>) {
    use std::fmt::Write as _;
    match count {
        Some(count) => {
            let _ = write!(line, "{count}");
        }
        None => line.push('-'),
    }
}

/// Seconds with milliseconds, or `-`.
fn push_seconds(line: &mut String, time: Option<std::time::Duration>) {
    use std::fmt::Write as _;
    match time {
        Some(time) => {
            let _ = write!(line, "{:.3}", time.as_secs_f64());
        }
        None => line.push('-'),
    }
}

fn json_line(record: &Record, request: &LoggedRequest) -> String {
    let mut object = serde_json::json!({
        "time": time_iso8601(record.ended_at),
        "remote_addr": request.client_ip.to_string(),
        "request_id": request.request_id.to_str().unwrap_or(""),
        "method": request.method.as_str(),
        "request_uri": request.request_uri(),
        "protocol": request.protocol,
        "host": request.host(),
        "status": record.status,
        "body_bytes_sent": record.body_bytes,
        "request_time": record.duration.as_secs_f64(),
        "response_end": record.end.as_str(),
        "upstream_addr": record.upstream_addr(),
        "upstream_status": record.upstream.as_ref().map(|u| u.status),
        "upstream_response_time": record.upstream_response_time().map(|t| t.as_secs_f64()),
        "upstream_header_time": record.upstream.as_ref().map(|u| u.header_time.as_secs_f64()),
    });
    for (field, header) in JSON_HEADERS {
        object[field] = request.header(&HeaderName::from_static(header)).into();
    }
    if let Some(key) = &record.key {
        object["api_key_name"] = key.name.as_str().into();
    }
    if let Some(reading) = &record.reading {
        object["model"] = reading.model.as_str().into();
        object["prompt_tokens"] = reading.spend.prompt.into();
        object["completion_tokens"] = reading.spend.completion.into();
    }
    object.to_string()
}

/// The usage log's line of a request made with an API key: who, which model, what it used, how long
/// it took and how it ended.
pub(crate) fn usage_line(line: &mut String, record: &Record, request: &LoggedRequest) {
    let key = record.key.as_deref();
    let reading = record.reading.as_ref();
    let object = serde_json::json!({
        "time": time_iso8601(record.ended_at),
        "request_id": request.request_id.to_str().unwrap_or(""),
        "key": key.map(|key| key.name.as_str()),
        "team": key.and_then(|key| key.team.as_deref()),
        "model": reading.map(|r| r.model.as_str()),
        "status": record.status,
        "prompt_tokens": reading.map(|r| r.spend.prompt),
        "completion_tokens": reading.map(|r| r.spend.completion),
        "image_tokens": reading.map(|r| r.spend.image),
        "ttft": record.stream.as_ref().and_then(|s| s.first_token).map(|t| t.as_secs_f64()),
        "duration": record.duration.as_secs_f64(),
        "end": record.end.as_str(),
    });
    line.push_str(&object.to_string());
}

thread_local! {
    /// This worker's last `$time_local` and its second: formatted once a second, as nginx caches its
    /// time strings, rather than once a line.
    static TIME_LOCAL: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Appends `at` as `$time_local` writes it.
fn push_time_local(line: &mut String, at: std::time::SystemTime) {
    let second = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    TIME_LOCAL.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *text = time_local(at);
            *cached = second;
        }
        line.push_str(text);
    });
}

/// `26/Nov/2026:20:11:08 +0000` (nginx's `$time_local`; infergate logs in UTC).
fn time_local(at: std::time::SystemTime) -> String {
    // httpdate gives `Thu, 26 Nov 2026 20:11:08 GMT`; the same fields in nginx's order.
    let date = httpdate::fmt_http_date(at);
    let fields: Vec<&str> = date.split(' ').collect();
    match fields[..] {
        [_, day, month, year, time, _] => format!("{day}/{month}/{year}:{time} +0000"),
        _ => date,
    }
}

/// `2026-11-26T20:11:08+00:00` (nginx's `$time_iso8601`, in UTC).
fn time_iso8601(at: std::time::SystemTime) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let date = httpdate::fmt_http_date(at);
    let fields: Vec<&str> = date.split(' ').collect();
    match fields[..] {
        [_, day, month, year, time, _] => {
            let month = MONTHS.iter().position(|m| *m == month).map_or(0, |i| i + 1);
            format!("{year}-{month:02}-{day}T{time}+00:00")
        }
        _ => date,
    }
}

/// What a file's writer thread is told.
enum Message {
    /// A worker's buffer went from empty to holding lines: write them within `FLUSH_AFTER`.
    Lines,
    /// A worker's buffer reached `BATCH_BYTES`: write now.
    Full,
    /// Write what waits, reopen the file (log rotation), then answer.
    Reopen(SyncSender<()>),
    /// Write what waits, then answer.
    Flush(SyncSender<()>),
}

/// A worker's buffer is handed to the file's writer thread once it holds this much.
const BATCH_BYTES: usize = 32 * 1024;
/// The longest a line waits in a worker's buffer for the batch to fill (nginx's `flush=`).
const FLUSH_AFTER: Duration = Duration::from_millis(100);
/// A worker's buffer holds at most this much (about 5,000 lines of `main`): beyond it the disk is
/// behind, and new lines are dropped and counted rather than making requests wait.
const WORKER_BYTES_MAX: usize = 1024 * 1024;

/// Lines formatted by the workers and not yet written: one buffer per worker thread
/// (`metrics::shard`), each on a cache line of its own, so a worker appends a line under a lock
/// only the writer thread ever contends for.
type WorkerBuffers = [Padded<Mutex<String>>; SHARDS];

/// One log file and the thread writing it. Shared by every location logging there, and kept across
/// reloads, so lines from two configs never interleave inside one write.
///
/// A request's line is formatted straight into its worker's buffer, and the writer thread writes the
/// buffers out when one holds `BATCH_BYTES` or `FLUSH_AFTER` after a line came: a request never waits
/// on the disk, and a worker pays no hand-off per line. Handing each line to the thread cost more
/// than nginx's one `write()` a request (a channel message, and a wake-up of the thread whenever it
/// had caught up: rps with the `main` log 0.80-0.83x nginx's with its log).
pub(crate) struct LogWriter {
    path: PathBuf,
    buffers: Arc<WorkerBuffers>,
    messages: SyncSender<Message>,
    dropped: AtomicU64,
}

fn lock(buffer: &Mutex<String>) -> MutexGuard<'_, String> {
    // A poisoned lock only means a panic while formatting a line; the buffer holds whole lines.
    buffer.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LogWriter {
    /// Opens (creating) `path` for appending and starts its writer thread.
    pub(crate) fn open(path: &Path) -> std::io::Result<Arc<LogWriter>> {
        let file = open_append(path)?;
        let (messages, received) = sync_channel(2 * SHARDS + 8);
        let buffers: Arc<WorkerBuffers> = Arc::new(std::array::from_fn(|_| Padded(Mutex::new(String::new()))));
        let (thread_path, thread_buffers) = (path.to_path_buf(), buffers.clone());
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&thread_path, file, &thread_buffers, &received))?;
        Ok(Arc::new(LogWriter { path: path.to_path_buf(), buffers, messages, dropped: AtomicU64::new(0) }))
    }

    /// Appends one line, which `line` writes (without its newline) into this worker's buffer; never
    /// blocks on the disk.
    pub(crate) fn write(&self, line: impl FnOnce(&mut String)) {
        let mut buffer = lock(&self.buffers[shard()].0);
        if buffer.len() >= WORKER_BYTES_MAX {
            drop(buffer);
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(path = %self.path.display(), "access log writer is behind; dropping lines");
            }
            return;
        }
        let before = buffer.len();
        line(&mut buffer);
        buffer.push('\n');
        let filled = before < BATCH_BYTES && buffer.len() >= BATCH_BYTES;
        drop(buffer);
        // A buffer tells the thread at most twice between two writes (its first line, and once
        // full), so the queue holds at most two messages a worker beside `Reopen` and `Flush`.
        if filled {
            let _ = self.messages.try_send(Message::Full);
        } else if before == 0 {
            let _ = self.messages.try_send(Message::Lines);
        }
    }

    /// Reopens the file (after log rotation moved it away), and returns once it is reopened (or
    /// after a second): what waited goes to the old file, every line written after this returns to
    /// the new one.
    pub(crate) fn reopen(&self) {
        self.ask(Message::Reopen);
    }

    /// Writes every line waiting, and returns once they are written (or after a second).
    pub(crate) fn flush(&self) {
        self.ask(Message::Flush);
    }

    /// Sends the thread `message` and waits, at most a second, for its answer.
    fn ask(&self, message: fn(SyncSender<()>) -> Message) {
        let (done, answered) = sync_channel(1);
        if self.messages.send(message(done)).is_ok() {
            let _ = answered.recv_timeout(Duration::from_secs(1));
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The writer thread: writes the workers' buffers when told (`Message`), at most `FLUSH_AFTER` after
/// a line came; ends, after writing what is left, when every `LogWriter` handle is gone.
fn write_lines(path: &Path, mut file: File, buffers: &WorkerBuffers, messages: &Receiver<Message>) {
    // A buffer swapped with a worker's, so both keep their capacity.
    let mut spare = String::new();
    let mut write_out = |file: &mut File| {
        for buffer in buffers {
            std::mem::swap(&mut *lock(&buffer.0), &mut spare);
            if !spare.is_empty() {
                if let Err(error) = file.write_all(spare.as_bytes()) {
                    tracing::error!(path = %path.display(), %error, "cannot write the access log");
                }
                spare.clear();
            }
        }
    };
    let mut due: Option<Instant> = None;
    loop {
        let message = match due {
            None => messages.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(due) => messages.recv_timeout(due.saturating_duration_since(Instant::now())),
        };
        match message {
            Ok(Message::Lines) => {
                due.get_or_insert_with(|| Instant::now() + FLUSH_AFTER);
            }
            Ok(Message::Full) | Err(RecvTimeoutError::Timeout) => {
                write_out(&mut file);
                due = None;
            }
            Ok(Message::Reopen(done)) => {
                write_out(&mut file);
                due = None;
                match open_append(path) {
                    Ok(reopened) => file = reopened,
                    Err(error) => tracing::error!(path = %path.display(), %error, "cannot reopen the access log"),
                }
                let _ = done.send(());
            }
            Ok(Message::Flush(done)) => {
                write_out(&mut file);
                due = None;
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Disconnected) => {
                write_out(&mut file);
                return;
            }
        }
    }
}

/// A location's access log: where, and in which format.
pub(crate) struct AccessLog {
    /// The file's writer.
    pub(crate) writer: Arc<LogWriter>,
    /// The line format.
    pub(crate) format: Arc<LogFormat>,
}

impl AccessLog {
    /// Writes the record's line.
    pub(crate) fn log(&self, record: &Record, request: &LoggedRequest) {
        self.writer.write(|line| self.format.format(line, record, request));
    }
}

/// The access logs of one config: writers by file (kept across reloads, so two configs never write
/// one file at once) and each configured (file, format) pair compiled once.
#[derive(Default)]
pub struct AccessLogs {
    writers: HashMap<PathBuf, Arc<LogWriter>>,
    /// By the configured (unresolved) path and format name.
    logs: HashMap<(PathBuf, String), Arc<AccessLog>>,
    /// Request headers any format reads.
    keep_headers: Vec<HeaderName>,
    /// The usage log's writer.
    usage: Option<Arc<LogWriter>>,
}

impl AccessLogs {
    /// Opens every configured log file (reusing `previous`'s writers) and compiles every format;
    /// a file that cannot be opened or an unknown format or variable is an error at its place.
    pub(crate) fn build(
        config: &Config,
        source: &Source,
        previous: Option<&AccessLogs>,
    ) -> Result<AccessLogs, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let custom: BTreeMap<String, String> =
            config.http.log_format.iter().map(|(name, text)| (name.clone(), text.get_ref().clone())).collect();
        for (name, text) in &config.http.log_format {
            if let Err(message) = LogFormat::parse(text.get_ref()) {
                errors.push(source.error(text.span(), format!("log_format `{name}`: {message}")));
            }
        }
        let settings = std::iter::once(&config.http.access_log)
            .chain(config.servers.iter().map(|s| &s.access_log))
            .chain(config.servers.iter().flat_map(|s| s.locations.iter().map(|l| &l.access_log)));
        let mut logs = AccessLogs::default();
        let mut formats: HashMap<String, Arc<LogFormat>> = HashMap::new();
        for setting in settings {
            let Some(AccessLogSetting::Log(log)) = setting else { continue };
            let key = (log.path.get_ref().clone(), log.format.get_ref().clone());
            if logs.logs.contains_key(&key) {
                continue;
            }
            let format = match formats.get(&key.1) {
                Some(format) => format.clone(),
                None => match LogFormat::named(&key.1, &custom) {
                    Ok(format) => {
                        let format = Arc::new(format);
                        formats.insert(key.1.clone(), format.clone());
                        format
                    }
                    Err(message) => {
                        errors.push(source.error(log.format.span(), message));
                        continue;
                    }
                },
            };
            let path = source.resolve(&key.0);
            let writer = match logs.writer(&path, previous) {
                Ok(writer) => writer,
                Err(error) => {
                    let message = format!("cannot open access log {}: {error}", path.display());
                    errors.push(source.error(log.path.span(), message));
                    continue;
                }
            };
            for name in format.headers() {
                if !logs.keep_headers.contains(&name) {
                    logs.keep_headers.push(name);
                }
            }
            logs.logs.insert(key, Arc::new(AccessLog { writer, format }));
        }
        if let Some(path) = &config.http.usage_log {
            let resolved = source.resolve(path.get_ref());
            match logs.writer(&resolved, previous) {
                Ok(writer) => logs.usage = Some(writer),
                Err(error) => errors
                    .push(source.error(path.span(), format!("cannot open usage log {}: {error}", resolved.display()))),
            }
        }
        if errors.is_empty() {
            Ok(logs)
        } else {
            Err(errors)
        }
    }

    /// The writer of `path`: this config's, `previous`'s, or a new one.
    fn writer(&mut self, path: &Path, previous: Option<&AccessLogs>) -> std::io::Result<Arc<LogWriter>> {
        let writer = match self.writers.get(path).or_else(|| previous?.writers.get(path)) {
            Some(writer) => writer.clone(),
            None => LogWriter::open(path)?,
        };
        self.writers.insert(path.to_path_buf(), writer.clone());
        Ok(writer)
    }

    /// The usage log, if one is configured.
    pub(crate) fn usage_log(&self) -> Option<&Arc<LogWriter>> {
        self.usage.as_ref()
    }

    /// The log for a place configured by `settings`, innermost first (location, server, `[http]`):
    /// the first one set decides.
    pub(crate) fn select(&self, settings: &[Option<&AccessLogSetting>]) -> Option<Arc<AccessLog>> {
        match settings.iter().flatten().next()? {
            AccessLogSetting::Off => None,
            AccessLogSetting::Log(log) => {
                self.logs.get(&(log.path.get_ref().clone(), log.format.get_ref().clone())).cloned()
            }
        }
    }

    /// The request headers a request's record must keep.
    pub(crate) fn keep_headers(&self) -> &[HeaderName] {
        &self.keep_headers
    }

    /// Whether anything is logged at all (an access log or the usage log).
    pub(crate) fn any(&self) -> bool {
        !self.logs.is_empty() || self.usage.is_some()
    }

    /// Reopens every log file (SIGUSR1, after rotation); blocks until each is reopened, so the
    /// lines of requests that end after this returns go to the new files.
    pub fn reopen(&self) {
        for writer in self.writers.values() {
            writer.reopen();
        }
    }

    /// Writes every line waiting in every log file (before the process exits).
    pub fn flush(&self) {
        for writer in self.writers.values() {
            writer.flush();
        }
    }
}

impl BodyEnd {
    /// As `$response_end` writes it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BodyEnd::Complete => "complete",
            BodyEnd::ClientClosed => "client_closed",
            BodyEnd::Timeout => "timeout",
            BodyEnd::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_with_known_variables_only() {
        assert!(LogFormat::parse(MAIN).is_ok());
        assert!(LogFormat::parse("$status ${request_time}s $http_x_api_key").is_ok());
        let error = LogFormat::parse("$status $bogus").unwrap_err();
        assert!(error.starts_with("unknown log variable `$bogus`"), "{error}");
        let LogFormat(Shape::Text(parts)) = LogFormat::parse("$http_x_api_key").unwrap() else { panic!() };
        assert!(matches!(&parts[0], Part::Var(Var::Header(name)) if name == "x-api-key"));
    }

    #[test]
    fn times_are_in_nginx_shapes() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_723_868);
        assert_eq!(time_local(at), "26/Nov/2026:20:11:08 +0000");
        assert_eq!(time_iso8601(at), "2026-11-26T20:11:08+00:00");
    }

    #[test]
    fn lines_written_after_reopen_returns_go_to_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, moved) = (dir.path().join("a.log"), dir.path().join("a.log.1"));
        let writer = LogWriter::open(&path).unwrap();
        writer.write(|line| line.push_str("one"));
        std::fs::rename(&path, &moved).unwrap();
        writer.reopen();
        assert!(path.exists(), "reopen returned before the new file was open");
        writer.write(|line| line.push_str("two"));
        writer.flush();
        let read = |path| std::fs::read_to_string(path).unwrap();
        assert_eq!((read(&moved), read(&path)), ("one\n".to_string(), "two\n".to_string()));
    }
}
