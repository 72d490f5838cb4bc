//! The request target as routing sees it: the path normalized like nginx's, and the host without
//! its port. A leaf: the router and static files read paths through it, and it imports nothing of
//! the gateway.

use std::borrow::Cow;

/// `host` of `host:port` and `[v6]:port`.
pub(crate) fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(host, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The request path as locations see it, like nginx: `%XX` decoded, `//` merged, `.` and `..`
/// resolved. Stops `/static/..%2Fv1/inference` from dodging the location it really names. `None`
/// for a path that is malformed or climbs above `/` (answered 400). The backend still receives the
/// path exactly as the client sent it.
pub(crate) fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') {
        return None;
    }
    if is_plain(path.as_bytes()) {
        return Some(Cow::Borrowed(path));
    }
    rebuild(path).map(Cow::Owned)
}

/// Decodes escapes and resolves dot and empty segments; `None` when the path leaves the root or
/// decodes to NUL or invalid UTF-8.
fn rebuild(path: &str) -> Option<String> {
    let decoded = percent_decode(path)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/').skip(1) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            other => segments.push(other),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut normalized = String::with_capacity(decoded.len());
    for segment in &segments {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if trailing || segments.is_empty() {
        normalized.push('/');
    }
    Some(normalized)
}

/// Whether a path is already normal: no escapes, no dot segments, no empty segments. One pass over
/// the bytes (the standard library's pattern searches cost several times more, per request).
fn is_plain(path: &[u8]) -> bool {
    let mut previous = 0u8;
    for &byte in path {
        if byte == b'%' || byte == b'.' || (byte == b'/' && previous == b'/') {
            return false;
        }
        previous = byte;
    }
    true
}

fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if byte == 0 {
                return None;
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_like_nginx() {
        assert_eq!(normalize_path("/a/b").unwrap(), "/a/b");
        assert_eq!(normalize_path("/static/..%2Fv1/inference").unwrap(), "/v1/inference");
        assert_eq!(normalize_path("//a///b/./c/").unwrap(), "/a/b/c/");
        assert_eq!(normalize_path("/a/%2e%2e/b").unwrap(), "/b");
        assert_eq!(normalize_path("/file.png").unwrap(), "/file.png");
        assert!(normalize_path("/../etc/passwd").is_none());
        assert!(normalize_path("/%zz").is_none());
        assert!(normalize_path("/a%00b").is_none());
        assert_eq!(normalize_path("/a/..").unwrap(), "/");
    }

    #[test]
    fn plain_paths_are_already_what_normalizing_makes_of_them() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = ['/', 'a', 'b', '.', '%', '2', 'e', 'F'];
        for _ in 0..20_000 {
            let length = rng.usize(1..12);
            let path: String =
                std::iter::once('/').chain((0..length).map(|_| alphabet[rng.usize(..alphabet.len())])).collect();
            if is_plain(path.as_bytes()) {
                assert_eq!(rebuild(&path).as_deref(), Some(path.as_str()), "{path}");
            }
        }
    }
}
