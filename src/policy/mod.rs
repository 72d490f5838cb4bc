//! Request policies: what runs between routing and the handler, in one fixed order: the client's
//! address behind trusted proxies (nginx's realip), rate limits (nginx's `limit_req`), concurrency
//! limits (`limit_conn`), and header edits.

pub(crate) mod connlimit;
pub(crate) mod headers;
pub(crate) mod ratelimit;
pub(crate) mod realip;
pub(crate) mod shared_zone;

use crate::client::ClientInfo;
use crate::config::ZoneKey;
use crate::error::GatewayError;
use crate::shared::leases::Asked;
use http::{Request, StatusCode};
use ratelimit::{KeyState, Limit, Verdict, Zone};
use shared_zone::{SharedVerdict, SharedZone};
use std::sync::Arc;
use std::time::Duration;

/// One compiled `limit_req` of a location.
pub(crate) struct RateLimit {
    /// The zone's name, for logs.
    pub(crate) zone_name: String,
    /// Its zone (shared by every location naming it).
    pub(crate) zone: Arc<Zone>,
    /// What the zone counts by.
    pub(crate) key: ZoneKey,
    /// Burst and delay of this location.
    pub(crate) limit: Limit,
    /// Status of a rejection (default 429).
    pub(crate) status: StatusCode,
    /// Where the zone's counts live when it is `shared` (else only in `zone`, which is also where a
    /// shared zone counts while its Redis is down and its fallback is local).
    pub(crate) shared: Option<Arc<SharedZone>>,
}

/// One compiled `limit_conn` of a location.
pub(crate) struct ConnLimit {
    /// The zone's counts (shared by every location naming it).
    pub(crate) counter: Arc<connlimit::ConnCounter>,
    /// What the zone counts by.
    pub(crate) key: ZoneKey,
    /// Requests in flight at once per key.
    pub(crate) max: usize,
    /// Status of a rejection (the zone's, default 429).
    pub(crate) status: StatusCode,
    /// Where the places are leased when the zone is `shared` (else only in `counter`, which is
    /// also where a shared zone counts while its Redis is down and its fallback is local).
    pub(crate) shared: Option<Arc<SharedZone>>,
}

/// The key of a request for a zone; `None` when the request has none (then it is not limited).
fn key_of<'a, B>(key: &ZoneKey, client: &'a ClientInfo, request: &'a Request<B>) -> Option<&'a [u8]> {
    match key {
        ZoneKey::ClientIp => Some(client.ip.as_bytes()),
        ZoneKey::Header(name) => request.headers().get(name).filter(|v| !v.is_empty()).map(|v| v.as_bytes()),
        ZoneKey::ApiKey => api_key(request.headers()),
    }
}

/// The bearer token of `Authorization`, else `X-API-Key`.
pub(crate) fn api_key(headers: &http::HeaderMap) -> Option<&[u8]> {
    let bearer = headers.get(http::header::AUTHORIZATION).and_then(|value| {
        let value = value.as_bytes();
        let (scheme, token) = value.split_at_checked(7)?;
        scheme.eq_ignore_ascii_case(b"bearer ").then(|| token.trim_ascii())
    });
    bearer.or_else(|| headers.get("x-api-key").map(|v| v.as_bytes())).filter(|key| !key.is_empty())
}

/// Takes a place in each of a location's concurrency limits; the guards must live as long as the
/// response. Any full one rejects the request (and releases what was taken). A shared zone's place is
/// a lease in Redis, asked for once.
pub(crate) async fn hold_places<B>(
    limits: &[ConnLimit],
    client: &ClientInfo,
    request: &Request<B>,
) -> Result<Vec<connlimit::ConnGuard>, GatewayError> {
    let mut guards = Vec::with_capacity(limits.len());
    for limit in limits {
        let Some(key) = key_of(&limit.key, client, request) else { continue };
        if let Some(zone) = &limit.shared {
            // Boxed: the Redis round trip's future would size every request's, shared or not.
            match crate::boxed::pinned(|| zone.leases.lease(zone.conn_key(key), limit.max, None)).await {
                Asked::Taken(lease) => {
                    guards.push(connlimit::ConnGuard::shared(lease));
                    continue;
                }
                Asked::Full => return Err(GatewayError::RateLimited { status: limit.status, retry_after_secs: 1 }),
                Asked::Unreachable => shared_zone::fall_back(zone)?,
            }
        }
        match limit.counter.try_acquire(key, limit.max) {
            Some(guard) => guards.push(guard),
            None => return Err(GatewayError::RateLimited { status: limit.status, retry_after_secs: 1 }),
        }
    }
    Ok(guards)
}

/// Applies a location's rate limits: any rejection rejects (and changes no zone); otherwise every zone
/// is updated and the request waits for the longest delay. Local zones are decided first, then the
/// shared ones in one round trip to Redis (`shared_zone`), then the local ones are stored.
pub(crate) async fn limit_requests<B>(
    limits: &[RateLimit],
    client: &ClientInfo,
    request: &Request<B>,
) -> Result<(), GatewayError> {
    if limits.is_empty() {
        return Ok(());
    }
    let mut accepted = Vec::with_capacity(limits.len());
    let mut shared = Vec::new();
    let mut delay = Duration::ZERO;
    for limit in limits {
        let Some(key) = key_of(&limit.key, client, request) else { continue };
        match &limit.shared {
            Some(zone) if zone.store.reachable() => shared.push((limit, key)),
            Some(zone) => {
                shared_zone::fall_back(zone)?;
                delay = delay.max(check_local(limit, key, &mut accepted)?);
            }
            None => delay = delay.max(check_local(limit, key, &mut accepted)?),
        }
    }
    if !shared.is_empty() {
        // Boxed: the Redis round trip's future would size every request's, shared or not.
        match crate::boxed::pinned(|| shared_zone::check(&shared)).await {
            Some(SharedVerdict::Accepted(excesses)) => {
                for ((limit, _), excess) in shared.iter().zip(excesses) {
                    match excess {
                        Some(excess) if !limit.zone.dry_run => {
                            delay = delay.max(limit.limit.delay_at(excess, limit.zone.rate_milli()));
                        }
                        Some(_) => {}
                        None => tracing::info!(zone = %limit.zone_name, "rate limit would reject (dry run)"),
                    }
                }
            }
            Some(SharedVerdict::Rejected(index, retry_after)) => return Err(rejection(shared[index].0, retry_after)),
            None => {
                for (limit, key) in shared {
                    shared_zone::fall_back(limit.shared.as_deref().ok_or(GatewayError::Internal)?)?;
                    delay = delay.max(check_local(limit, key, &mut accepted)?);
                }
            }
        }
    }
    for (limit, key, state) in accepted {
        limit.zone.commit(key, state);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Ok(())
}

/// Decides `limit` for `key` on the gateway's own counts: the delay of an accepted request, whose
/// state joins `accepted` to be stored once every limit accepted.
fn check_local<'a>(
    limit: &'a RateLimit,
    key: &'a [u8],
    accepted: &mut Vec<(&'a RateLimit, &'a [u8], KeyState)>,
) -> Result<Duration, GatewayError> {
    let (verdict, state) = limit.zone.check(key, limit.limit);
    match verdict {
        Verdict::Reject(retry_after) if limit.zone.dry_run => {
            tracing::info!(zone = %limit.zone_name, ?retry_after, "rate limit would reject (dry run)");
            Ok(Duration::ZERO)
        }
        Verdict::Reject(retry_after) => Err(rejection(limit, retry_after)),
        Verdict::Accept(wait) => {
            if let Some(state) = state {
                accepted.push((limit, key, state));
            }
            Ok(if limit.zone.dry_run { Duration::ZERO } else { wait })
        }
    }
}

/// The answer to a request `limit` rejected, which fits again after `retry_after`.
fn rejection(limit: &RateLimit, retry_after: Duration) -> GatewayError {
    GatewayError::RateLimited {
        status: limit.status,
        retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_is_the_bearer_token_else_x_api_key() {
        let client = ClientInfo::new("127.0.0.1:1".parse().unwrap(), false);
        let request = |headers: &[(&str, &str)]| {
            let mut request = Request::get("/");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.body(()).unwrap()
        };
        let key = |headers| key_of(&ZoneKey::ApiKey, &client, &request(headers)).map(|k| k.to_vec());
        assert_eq!(key(&[("authorization", "Bearer sk-abc ")]), Some(b"sk-abc".to_vec()));
        assert_eq!(key(&[("authorization", "bearer sk-abc"), ("x-api-key", "other")]), Some(b"sk-abc".to_vec()));
        assert_eq!(key(&[("authorization", "Basic dXNlcg=="), ("x-api-key", "k2")]), Some(b"k2".to_vec()));
        assert_eq!(key(&[("authorization", "Bearer ")]), None);
        assert_eq!(key(&[]), None);
    }
}
