//! `X-Request-Id`: kept when the client sent a valid one, generated otherwise; sent upstream, returned
//! to the client, and named in the gateway's logs, so one request can be followed across systems.

use bytes::Bytes;
use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The header's name.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id: the client's when valid (1-128 of `A-Z a-z 0-9 . _ -`), else a new random one
/// (128 bits, hex). The request's headers are updated to carry it upstream.
pub(crate) fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    // One lookup for both the check and the insertion. Exactly one id goes upstream.
    let entry = match headers.entry(&X_REQUEST_ID) {
        Entry::Occupied(mut entry) if is_valid(entry.get().as_bytes()) => {
            let id = entry.get().clone();
            if entry.iter().nth(1).is_some() {
                entry.insert(id.clone());
            }
            return id;
        }
        entry => entry,
    };
    // Bytes owning their 32-byte array: the clones below share it by reference count, where bytes
    // copied from a slice are allocated again on their first clone.
    let id = HeaderValue::from_maybe_shared(Bytes::from_owner(hex(fastrand::u128(..))))
        .unwrap_or_else(|_| HeaderValue::from_static("0"));
    match entry {
        Entry::Occupied(mut entry) => {
            entry.insert(id.clone());
        }
        Entry::Vacant(entry) => {
            entry.insert(id.clone());
        }
    }
    id
}

/// 1-128 of `A-Z a-z 0-9 . _ -`.
fn is_valid(id: &[u8]) -> bool {
    (1..=128).contains(&id.len()) && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 32 lowercase hex digits, written directly: `format!` cost a third of the id's making, per request.
fn hex(value: u128) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (pair, byte) in out.chunks_exact_mut(2).zip(value.to_be_bytes()) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_valid_ids_and_replaces_others() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("trace-1.a_b"));
        assert_eq!(ensure(&mut headers), "trace-1.a_b");
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has spaces"));
        let replaced = ensure(&mut headers);
        assert_eq!(replaced.len(), 32);
        assert_eq!(headers[&X_REQUEST_ID], replaced);
        headers.append(&X_REQUEST_ID, HeaderValue::from_static("second"));
        assert_eq!(ensure(&mut headers), replaced, "the first valid id is kept");
        assert_eq!(headers.get_all(&X_REQUEST_ID).iter().collect::<Vec<_>>(), [&replaced], "one id goes upstream");
        let mut empty = HeaderMap::new();
        let generated = ensure(&mut empty);
        assert_ne!(generated, ensure(&mut HeaderMap::new()), "random");
    }

    #[test]
    fn hex_matches_format() {
        for value in [0, 1, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, fastrand::u128(..)] {
            assert_eq!(hex(value), format!("{value:032x}").as_bytes());
        }
    }
}
