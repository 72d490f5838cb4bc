//! Limit zones kept in Redis (`shared = true`): every gateway that names the same Redis counts one
//! zone, so a 10 r/s zone admits 10 r/s in all, however many gateways serve it. A request's shared
//! `limit_req` zones are decided together by one Lua script (`limit_req.lua`, the algorithm of
//! `ratelimit.rs` on Redis's clock): one round trip, and as locally, no zone counts a request that
//! another rejects. A shared `limit_conn` place is a lease in Redis (`shared::leases`). While Redis
//! cannot be reached (`shared::SharedStore`), each zone takes its `fallback`: its local counts (the
//! zone's rate, or `max` places, in each gateway), or a 503.

use super::RateLimit;
use crate::config::SharedFallback;
use crate::error::GatewayError;
use crate::shared::leases::Leases;
use crate::shared::SharedStore;
use redis::Script;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// A zone's place in Redis.
pub(crate) struct SharedZone {
    pub(crate) store: Arc<SharedStore>,
    /// `PREFIX` `limit_req:NAME:`, followed by a request's key.
    key_prefix: Vec<u8>,
    /// `PREFIX` `limit_conn:NAME:`, followed by a request's key: its leases.
    conn_prefix: Vec<u8>,
    /// The leases of the zone's `limit_conn` places.
    pub(crate) leases: Arc<Leases>,
    /// Keys other than the client's address are stored as their SHA-256 (they may be API keys).
    hashed: bool,
    pub(crate) fallback: SharedFallback,
}

impl SharedZone {
    /// The zone `name` in `store`; `hashed` when its keys may be secrets.
    pub(crate) fn new(store: Arc<SharedStore>, name: &str, hashed: bool, fallback: SharedFallback) -> SharedZone {
        let key_prefix = store.key(&[b"limit_req:", name.as_bytes(), b":"]);
        let conn_prefix = store.key(&[b"limit_conn:", name.as_bytes(), b":"]);
        let leases = Leases::new(store.clone(), store.lease_ttl());
        SharedZone { store, key_prefix, conn_prefix, leases, hashed, fallback }
    }

    fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        self.keyed(self.key_prefix.clone(), key)
    }

    /// The Redis key of `key`'s `limit_conn` leases.
    pub(crate) fn conn_key(&self, key: &[u8]) -> Arc<[u8]> {
        Arc::from(self.keyed(self.conn_prefix.clone(), key))
    }

    fn keyed(&self, mut redis_key: Vec<u8>, key: &[u8]) -> Vec<u8> {
        if self.hashed {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
            // Hex by a table: this runs per request, and the formatter allocated a string a byte.
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for byte in digest.as_ref() {
                redis_key.extend_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
            }
        } else {
            redis_key.extend_from_slice(key);
        }
        redis_key
    }
}

/// What Redis said of a request's shared zones.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SharedVerdict {
    /// Every zone accepted, each with its key's excess now (milli-requests; `None`: a dry run's
    /// zone that would have rejected).
    Accepted(Vec<Option<u64>>),
    /// The zone at this index rejected; it fits again after this long.
    Rejected(usize, Duration),
}

static LIMIT_REQ: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("limit_req.lua")));

/// Asks Redis about `zones` (each a limit and the request's key; all of one store); `None` when it
/// could not be asked.
pub(crate) async fn check(zones: &[(&RateLimit, &[u8])]) -> Option<SharedVerdict> {
    let store = zones.first()?.0.shared.as_ref()?.store.clone();
    let mut invocation = LIMIT_REQ.prepare_invoke();
    for (limit, key) in zones {
        let zone = limit.shared.as_ref()?;
        invocation.key(zone.redis_key(key));
        invocation.arg(limit.zone.rate_milli()).arg(limit.limit.burst * 1000).arg(u8::from(limit.zone.dry_run));
    }
    let answer: Vec<i64> = store.run(&invocation).await?;
    verdict(&answer, zones.len())
}

/// The script's answer read: `{1, excess...}` or `{0, zone (from 1), wait_ms}`; `None` for anything
/// else (a script of another version).
fn verdict(answer: &[i64], zones: usize) -> Option<SharedVerdict> {
    match answer {
        [1, excess @ ..] if excess.len() == zones => {
            Some(SharedVerdict::Accepted(excess.iter().map(|&e| u64::try_from(e).ok()).collect()))
        }
        &[0, zone, wait_ms] => {
            let index = usize::try_from(zone).ok()?.checked_sub(1).filter(|&index| index < zones)?;
            Some(SharedVerdict::Rejected(index, Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))))
        }
        _ => None,
    }
}

/// What a shared zone does about a request while Redis cannot be asked: `Ok` to count it locally,
/// else the 503 of `fallback = "refuse"`.
pub(crate) fn fall_back(zone: &SharedZone) -> Result<(), GatewayError> {
    zone.store.fell_back();
    match zone.fallback {
        SharedFallback::Local => Ok(()),
        SharedFallback::Refuse => {
            Err(GatewayError::LimitsUnavailable { retry_after_secs: zone.store.retry_after_secs() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_answers_are_read_and_anything_else_is_not() {
        let cases: [(&[i64], usize, Option<SharedVerdict>); 7] = [
            (&[1, 0, 2000], 2, Some(SharedVerdict::Accepted(vec![Some(0), Some(2000)]))),
            (&[1, -1], 1, Some(SharedVerdict::Accepted(vec![None]))),
            (&[0, 2, 150], 2, Some(SharedVerdict::Rejected(1, Duration::from_millis(150)))),
            (&[0, 3, 150], 2, None),
            (&[0, 0, 150], 2, None),
            (&[1, 0], 2, None),
            (&[], 1, None),
        ];
        for (answer, zones, expected) in cases {
            assert_eq!(verdict(answer, zones), expected, "{answer:?}");
        }
    }
}
