//! Choosing a content coding from `Accept-Encoding` (RFC 9110 §12.5.3): the highest q-value among
//! the codings offered, ties going to the server's order of preference, `q=0` refusing one, `*`
//! standing for every coding the client did not name.

use crate::config::Encoding;
use http::HeaderValue;

/// The coding to use for a client that sent `accept` (its `Accept-Encoding`), among `offered` in the
/// server's order of preference; `None` when the client accepts none of them.
pub(crate) fn negotiate(accept: Option<&HeaderValue>, offered: &[Encoding]) -> Option<Encoding> {
    let accept = accept?.to_str().ok()?;
    let mut wildcard: Option<f32> = None;
    let mut named: [Option<f32>; 3] = [None; 3];
    for item in accept.split(',') {
        let mut params = item.split(';');
        let token = params.next().unwrap_or("").trim();
        let quality = params
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if token == "*" {
            wildcard = Some(quality);
            continue;
        }
        let token = if token.eq_ignore_ascii_case("x-gzip") { "gzip" } else { token };
        for (slot, encoding) in named.iter_mut().zip(Encoding::ALL) {
            if token.eq_ignore_ascii_case(encoding.token()) {
                *slot = Some(quality);
            }
        }
    }
    let quality_of = |encoding: Encoding| named[encoding as usize].or(wildcard).unwrap_or(0.0);
    let mut best: Option<(Encoding, f32)> = None;
    for &encoding in offered {
        let quality = quality_of(encoding);
        if quality > 0.0 && best.is_none_or(|(_, q)| quality > q) {
            best = Some((encoding, quality));
        }
    }
    best.map(|(encoding, _)| encoding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Encoding::*;

    fn pick(accept: &str) -> Option<Encoding> {
        negotiate(Some(&HeaderValue::from_str(accept).unwrap()), &[Zstd, Br, Gzip])
    }

    #[test]
    fn q_values_decide_and_ties_follow_the_servers_order() {
        assert_eq!(pick("gzip, deflate, br, zstd"), Some(Zstd));
        assert_eq!(pick("gzip, deflate, br"), Some(Br));
        assert_eq!(pick("gzip"), Some(Gzip));
        assert_eq!(pick("br;q=0.5, gzip;q=0.8"), Some(Gzip));
        assert_eq!(pick("BR;Q=1, gzip;q=0.9"), Some(Br));
        assert_eq!(pick("x-gzip"), Some(Gzip));
    }

    #[test]
    fn zero_refuses_and_the_wildcard_covers_the_rest() {
        assert_eq!(pick("gzip;q=0, deflate"), None);
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("*"), Some(Zstd));
        assert_eq!(pick("*;q=0.1, zstd;q=0, br;q=0"), Some(Gzip));
        assert_eq!(pick("*;q=0"), None);
        assert_eq!(negotiate(None, &[Gzip]), None);
        assert_eq!(negotiate(Some(&HeaderValue::from_static("br, gzip")), &[Gzip]), Some(Gzip));
    }
}
