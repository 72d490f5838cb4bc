//! The static files handler: nginx's `root`, `alias`, `index`, `expires` and `gzip_static`, with
//! `ETag` / `Last-Modified` revalidation (304), single byte ranges (206 / 416) and HEAD.
//!
//! Written here rather than on tower-http's `ServeDir` because that serves no `ETag` and no
//! `If-None-Match`, follows symlinks out of its folder, and knows neither `alias` nor `expires`: the
//! adapting would be longer than this module.
//!
//! Nothing outside the folder is reachable: the path is matched after nginx's normalization (`%2e%2e`
//! and `%2F` decoded, dot segments resolved), a segment that is still `.` or `..` (nginx's `alias`
//! trap, `/static../secret` under `location /static`) answers 404, and a file whose real path (symlinks
//! resolved) leaves the folder answers 403 unless `allow_symlinks_outside` says otherwise. Folders are
//! never listed.

use crate::compress;
use crate::config::Encoding;
use crate::error::BoxError;
use crate::error::GatewayError;
use crate::uri;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};

/// A compiled static files location.
pub(crate) struct StaticFiles {
    /// The folder files are served from.
    dir: PathBuf,
    /// The folder with symlinks resolved, for the containment check (resolved at load when it exists).
    canonical_dir: Option<PathBuf>,
    /// With `alias`: the location's path, replaced by `dir`. With `root`: `None`, the whole path is
    /// appended to `dir`.
    alias_of: Option<String>,
    /// Files tried, in order, for a folder.
    index: Vec<String>,
    /// `max-age` from `expires`, for `Cache-Control` and `Expires`.
    expires: Option<Duration>,
    /// `Cache-Control` for 200, 206 and 304 answers: `max-age` and the configured directives.
    cache_control: Option<HeaderValue>,
    /// Serve `FILE.br`, `FILE.zst` or `FILE.gz` when present and accepted.
    precompressed: bool,
    /// Serve files whose real path leaves `dir`.
    allow_symlinks_outside: bool,
}

/// Settings of a static files location, as configured.
pub(crate) struct StaticSettings {
    /// The folder (already resolved against the config file's folder).
    pub(crate) dir: PathBuf,
    /// The location path `dir` stands for (`alias`), or `None` (`root`).
    pub(crate) alias_of: Option<String>,
    /// Index file names.
    pub(crate) index: Vec<String>,
    /// nginx's `expires`.
    pub(crate) expires: Option<Duration>,
    /// More `Cache-Control` directives (`public, no-transform`).
    pub(crate) cache_control: Option<String>,
    /// Look for precompressed siblings.
    pub(crate) precompressed: bool,
    /// Follow symlinks out of the folder.
    pub(crate) allow_symlinks_outside: bool,
}

impl StaticFiles {
    /// Compiles the settings; the header values are made once here.
    pub(crate) fn new(settings: StaticSettings) -> StaticFiles {
        let max_age = settings.expires.map(|d| format!("max-age={}", d.as_secs()));
        let directives: Vec<String> = max_age.into_iter().chain(settings.cache_control).collect();
        StaticFiles {
            canonical_dir: std::fs::canonicalize(&settings.dir).ok(),
            dir: settings.dir,
            alias_of: settings.alias_of,
            index: settings.index,
            expires: settings.expires,
            cache_control: (!directives.is_empty())
                .then(|| HeaderValue::from_str(&directives.join(", ")).ok())
                .flatten(),
            precompressed: settings.precompressed,
            allow_symlinks_outside: settings.allow_symlinks_outside,
        }
    }

    /// Answers a request for a file; the body is `None` when the answer has none (HEAD, 304, 301,
    /// 416, an empty file).
    pub(crate) async fn serve<B>(&self, request: &Request<B>) -> Result<Response<Option<FileBody>>, GatewayError> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Err(GatewayError::MethodNotAllowed);
        }
        let path = uri::normalize_path(request.uri().path())
            .ok_or_else(|| GatewayError::BadRequest("malformed request path".into()))?;
        let mut file = self.file_path(&path)?;
        let mut metadata = tokio::fs::metadata(&file).await.map_err(io_error)?;
        if metadata.is_dir() {
            if !path.ends_with('/') {
                return Ok(moved_to_folder(request.uri()));
            }
            (file, metadata) = self.index_of(&file).await?;
        }
        if !metadata.is_file() {
            return Err(GatewayError::NotFound);
        }
        self.check_inside(&file).await?;
        let headers = request.headers();
        let validators = Validators::of(&metadata);
        let mut response = Response::new(None);
        if validators.not_modified(headers) {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            validators.insert(response.headers_mut());
            self.insert_cache_headers(response.headers_mut());
            return Ok(response);
        }
        let content_type = mime_guess::from_path(&file).first_raw().unwrap_or("application/octet-stream");
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        let precompressed = self.precompressed_variant(&file, headers, response.headers_mut()).await;
        let (file, length, range) = match precompressed {
            Some((encoding, sibling, sibling_metadata)) => {
                response.headers_mut().insert(header::CONTENT_ENCODING, encoding.header_value());
                (sibling, sibling_metadata.len(), None)
            }
            None => {
                response.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                let length = metadata.len();
                (file, length, requested_range(headers, length, &validators))
            }
        };
        validators.insert(response.headers_mut());
        let (start, count) = match range {
            None => (0, length),
            Some(Ok((start, end))) => {
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                response.headers_mut().insert(header::CONTENT_RANGE, ascii(format!("bytes {start}-{end}/{length}")));
                (start, end - start + 1)
            }
            Some(Err(())) => {
                let mut response = Response::new(None);
                *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                response.headers_mut().insert(header::CONTENT_RANGE, ascii(format!("bytes */{length}")));
                return Ok(response);
            }
        };
        self.insert_cache_headers(response.headers_mut());
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(count));
        if request.method() == Method::GET && count > 0 {
            let mut opened = tokio::fs::File::open(&file).await.map_err(io_error)?;
            if start > 0 {
                opened.seek(SeekFrom::Start(start)).await.map_err(io_error)?;
            }
            *response.body_mut() = Some(FileBody { file: opened, remaining: count, chunk: None });
        }
        Ok(response)
    }

    /// The file a normalized request path names.
    fn file_path(&self, path: &str) -> Result<PathBuf, GatewayError> {
        let relative = match &self.alias_of {
            Some(location) => path.strip_prefix(location.as_str()).ok_or(GatewayError::NotFound)?,
            None => path,
        };
        let mut file = self.dir.clone();
        for segment in relative.split('/').filter(|s| !s.is_empty()) {
            if segment == "." || segment == ".." || segment.contains('\0') {
                return Err(GatewayError::NotFound);
            }
            file.push(segment);
        }
        Ok(file)
    }

    /// The first index file of a folder; a folder without one answers 403 (no listings).
    async fn index_of(&self, folder: &Path) -> Result<(PathBuf, std::fs::Metadata), GatewayError> {
        for name in &self.index {
            let candidate = folder.join(name);
            if let Ok(metadata) = tokio::fs::metadata(&candidate).await {
                if metadata.is_file() {
                    return Ok((candidate, metadata));
                }
            }
        }
        Err(GatewayError::Forbidden)
    }

    /// 403 for a file whose real path leaves the folder, unless allowed.
    async fn check_inside(&self, file: &Path) -> Result<(), GatewayError> {
        if self.allow_symlinks_outside {
            return Ok(());
        }
        let real = tokio::fs::canonicalize(file).await.map_err(io_error)?;
        let dir = match &self.canonical_dir {
            Some(dir) => dir.clone(),
            None => tokio::fs::canonicalize(&self.dir).await.map_err(io_error)?,
        };
        if real.starts_with(&dir) {
            Ok(())
        } else {
            tracing::warn!(file = %file.display(), real = %real.display(), "symlink leaves the static folder");
            Err(GatewayError::Forbidden)
        }
    }

    /// The best precompressed sibling the client accepts, if any; a file that has siblings gets
    /// `Vary: Accept-Encoding` either way. Ranges are served from the file itself.
    async fn precompressed_variant(
        &self,
        file: &Path,
        request: &HeaderMap,
        response: &mut HeaderMap,
    ) -> Option<(Encoding, PathBuf, std::fs::Metadata)> {
        if !self.precompressed || request.contains_key(header::RANGE) {
            return None;
        }
        let mut siblings = Vec::new();
        for encoding in Encoding::ALL {
            let mut name = file.as_os_str().to_owned();
            name.push(encoding.file_suffix());
            let sibling = PathBuf::from(name);
            if let Ok(metadata) = tokio::fs::metadata(&sibling).await {
                if metadata.is_file() {
                    siblings.push((encoding, sibling, metadata));
                }
            }
        }
        if siblings.is_empty() {
            return None;
        }
        compress::add_vary(response);
        let offered: Vec<Encoding> = siblings.iter().map(|(encoding, _, _)| *encoding).collect();
        let chosen = compress::negotiate(request.get(header::ACCEPT_ENCODING), &offered)?;
        siblings.into_iter().find(|(encoding, _, _)| *encoding == chosen)
    }

    /// `Cache-Control` and `Expires`, as nginx's `expires` sets them.
    fn insert_cache_headers(&self, headers: &mut HeaderMap) {
        if let Some(cache_control) = &self.cache_control {
            headers.insert(header::CACHE_CONTROL, cache_control.clone());
        }
        if let Some(expires) = self.expires {
            let date = httpdate::fmt_http_date(SystemTime::now() + expires);
            if let Ok(value) = HeaderValue::try_from(date) {
                headers.insert(header::EXPIRES, value);
            }
        }
    }
}

/// A file's `ETag` (nginx's form: modification time and length in hex) and `Last-Modified`.
struct Validators {
    etag: String,
    modified: Option<SystemTime>,
}

impl Validators {
    fn of(metadata: &std::fs::Metadata) -> Validators {
        let modified = metadata.modified().ok();
        let seconds = modified.and_then(|m| m.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
        Validators { etag: format!("\"{seconds:x}-{:x}\"", metadata.len()), modified }
    }

    fn last_modified(&self) -> Option<String> {
        self.modified.map(httpdate::fmt_http_date)
    }

    fn insert(&self, headers: &mut HeaderMap) {
        if let Ok(etag) = HeaderValue::try_from(self.etag.as_str()) {
            headers.insert(header::ETAG, etag);
        }
        if let Some(date) = self.last_modified().and_then(|d| HeaderValue::try_from(d).ok()) {
            headers.insert(header::LAST_MODIFIED, date);
        }
    }

    /// RFC 9110 §13.2.2: `If-None-Match` (weak comparison) decides when present, else
    /// `If-Modified-Since`.
    fn not_modified(&self, request: &HeaderMap) -> bool {
        if let Some(tags) = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
            return tags.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == self.etag);
        }
        let since =
            request.get(header::IF_MODIFIED_SINCE).and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
        match (since, self.modified) {
            (Some(since), Some(modified)) => {
                let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                seconds(modified) <= seconds(since)
            }
            _ => false,
        }
    }
}

/// The byte range to serve, first and last inclusive: `None` for the whole file (no `Range`, one
/// that is not a single `bytes=` range, or an `If-Range` that no longer matches), `Err` for a range
/// past the end (416).
fn requested_range(request: &HeaderMap, length: u64, validators: &Validators) -> Option<Result<(u64, u64), ()>> {
    let spec = request.get(header::RANGE)?.to_str().ok()?.trim().strip_prefix("bytes=")?;
    if let Some(if_range) = request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let matches = if_range == validators.etag || validators.last_modified().is_some_and(|d| d == if_range);
        if !matches {
            return None;
        }
    }
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        if suffix == 0 {
            return Some(Err(()));
        }
        (length.saturating_sub(suffix), length.checked_sub(1)?)
    } else {
        let first: u64 = first.parse().ok()?;
        let last = if last.is_empty() { u64::MAX } else { last.parse().ok()? };
        if first > last {
            return None;
        }
        if first >= length {
            return Some(Err(()));
        }
        (first, last.min(length - 1))
    };
    Some(Ok(range))
}

/// A 301 to the folder's path with a trailing slash, as nginx answers for a folder.
fn moved_to_folder(uri: &http::Uri) -> Response<Option<FileBody>> {
    let target = match uri.query() {
        Some(query) => format!("{}/?{query}", uri.path()),
        None => format!("{}/", uri.path()),
    };
    let mut response = Response::new(None);
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(location) = HeaderValue::try_from(target) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// A header value from text known to be visible ASCII (numbers and fixed words).
fn ascii(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Missing files answer 404, unreadable ones 403.
fn io_error(error: std::io::Error) -> GatewayError {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied => GatewayError::Forbidden,
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => GatewayError::NotFound,
        _ => {
            tracing::warn!(%error, "cannot read a static file");
            GatewayError::NotFound
        }
    }
}

/// A file's bytes, read in chunks of up to 64 KiB as the client takes them.
pub(crate) struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    /// The buffer of a read still in progress.
    chunk: Option<BytesMut>,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this.remaining.min(64 * 1024) as usize;
        let chunk = this.chunk.get_or_insert_with(|| BytesMut::zeroed(want));
        let mut buf = ReadBuf::new(&mut chunk[..]);
        std::task::ready!(Pin::new(&mut this.file).poll_read(cx, &mut buf))?;
        let read = buf.filled().len();
        if read == 0 {
            return Poll::Ready(Some(Err("the file shrank while it was being sent".into())));
        }
        let mut chunk = this.chunk.take().unwrap_or_default();
        chunk.truncate(read);
        this.remaining -= read as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
