//! API keys: who may call an `auth = "api_key"` location and what each key may do. A request names
//! its key as OpenAI's and Anthropic's clients send it (`Authorization: Bearer KEY`, else
//! `X-API-Key: KEY`); the gateway keeps only SHA-256 digests of the secrets, finds the key by its
//! digest and compares the whole digest in constant time. A key may be disabled, expire, be limited
//! to some models (globs), to a request rate (`limit_req` semantics, with `burst` and `nodelay`) and
//! to requests in flight, and sets its requests' place in an upstream's admission queue.
//!
//! The store is built at config load; a reload builds a new one, and a key that stays (same name and
//! digest) keeps its rate and concurrency counts, so adding or revoking keys drops no request. What
//! each key used is kept in the store's `usage::UsageBook`, which reloads hand on.

pub(crate) mod budget;
pub(crate) mod meter;
pub(crate) mod shared_budget;
pub(crate) mod usage;

use crate::config::{parse_rate, parse_sha256, parse_time, ApiKeyConfig, KeyPriority, SharedFallback, ZoneKey};
use crate::error::{GatewayError, KeyRefusal};
use crate::glob;
use crate::policy::connlimit::ConnCounter;
use crate::policy::ratelimit::{Limit, Zone};
use crate::policy::shared_zone::SharedZone;
use crate::policy::{self, ConnLimit, RateLimit};
use crate::shared::SharedStore;
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{digest, SHA256};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use meter::KeyBudgets;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use usage::{KeyUsage, ModelLabels, UsageBook};

// OpenAI's request headers; constants, so that no request parses their names.
const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");

/// One configured key.
pub(crate) struct ApiKey {
    /// Its unique name, for logs, metrics and the admin API.
    pub(crate) name: String,
    /// The team or customer it belongs to.
    pub(crate) team: Option<String>,
    digest: [u8; 32],
    /// Model globs it may name; `*` matches any run of characters.
    pub(crate) models: Vec<String>,
    /// Its request rate, as a one-key `limit_req` (empty when unlimited).
    pub(crate) limits: Vec<RateLimit>,
    /// Its requests in flight, as a one-key `limit_conn` (empty when unlimited).
    pub(crate) conn_limits: Vec<ConnLimit>,
    /// Its place in an admission queue: 2 high, 1 normal, 0 low.
    pub(crate) priority: u8,
    /// Whether a request's own priority header is believed instead.
    pub(crate) client_priority: bool,
    /// When it stops working.
    pub(crate) expires: Option<SystemTime>,
    /// Refused while true.
    pub(crate) disabled: bool,
    /// Its token budgets, if it has any.
    pub(crate) budgets: Option<Arc<KeyBudgets>>,
    /// What it used, by model.
    pub(crate) usage: Arc<KeyUsage>,
}

impl ApiKey {
    /// Whether the key may name `model`.
    pub(crate) fn allows_model(&self, model: &str) -> bool {
        self.models.iter().any(|pattern| glob::matches(pattern, model))
    }

    /// OpenAI's request headers for an answer to this key, presented as `secret`: its rate per minute,
    /// the requests it may still send at once, and when that is back to its whole burst. None without
    /// a `rate`.
    pub(crate) fn rate_headers(&self, secret: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
        let Some(limit) = self.limits.first() else { return Vec::new() };
        let (per_minute, remaining, reset_ms) = limit.zone.standing(secret, limit.limit.burst);
        let mut headers =
            vec![(LIMIT_REQUESTS, HeaderValue::from(per_minute)), (REMAINING_REQUESTS, HeaderValue::from(remaining))];
        headers.push((RESET_REQUESTS, meter::reset_value(reset_ms)));
        headers
    }

    /// Whether it may name only some models: its requests must then name one.
    pub(crate) fn limits_models(&self) -> bool {
        !self.models.iter().any(|pattern| pattern == "*")
    }
}

/// The keys of a config, found by digest.
#[derive(Default)]
pub(crate) struct KeyStore {
    /// In config order, for listing.
    keys: Vec<Arc<ApiKey>>,
    /// By the first 8 bytes of the digest; the whole digest is then compared in constant time.
    by_prefix: HashMap<u64, Vec<Arc<ApiKey>>>,
    /// Which build of the keys this is: a worker's cache of recent keys holds entries of one.
    generation: u64,
    /// What every key used since start, handed from store to store.
    usage: Arc<UsageBook>,
    /// The models the config names, for usage labels.
    labels: ModelLabels,
}

/// Builds of a `KeyStore` so far, for `KeyStore::generation`.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// Secrets a worker thread saw recently, with their keys: hashing a secret with SHA-256 was most
/// of what a key cost a request (callgrind: 2,400 of 4,200 instructions). Looked up by a keyed
/// SipHash of the secret, then compared in constant time; valid for one generation of the store (a
/// reload revokes what it removed at once). Only found keys are kept, at most `RECENT_KEYS`.
struct RecentKeys {
    generation: u64,
    hasher: RandomState,
    entries: HashMap<u64, (Box<[u8]>, Arc<ApiKey>)>,
}

/// Secrets a worker remembers before it starts again.
const RECENT_KEYS: usize = 256;

thread_local! {
    static RECENT: RefCell<RecentKeys> =
        RefCell::new(RecentKeys { generation: 0, hasher: RandomState::new(), entries: HashMap::new() });
}

impl KeyStore {
    /// Compiles validated `[[api_key]]` tables; a key of `previous` with the same name and digest keeps
    /// its rate and concurrency counts, and every key's usage carries on. `models` are the model names
    /// the rest of the config routes, which (with the keys' own, globs left out) label usage. With
    /// `shared` (`[redis] share_api_keys`), each key's rate and token budgets are kept there.
    pub(crate) fn build<'a>(
        configs: &'a [ApiKeyConfig],
        previous: Option<&KeyStore>,
        models: impl IntoIterator<Item = &'a str>,
        shared: Option<&Arc<SharedStore>>,
    ) -> KeyStore {
        let key_models = configs.iter().flat_map(|key| key.models.iter().map(|m| m.get_ref().as_str()));
        let mut store = KeyStore {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            usage: previous.map(|p| p.usage.clone()).unwrap_or_default(),
            labels: ModelLabels::new(models.into_iter().chain(key_models)),
            ..KeyStore::default()
        };
        for config in configs {
            let Some(digest) = parse_sha256(config.sha256.get_ref()) else { continue };
            let name = config.name.get_ref().clone();
            let kept = previous.and_then(|p| p.keys.iter().find(|k| k.name == name && k.digest == digest));
            let rate = config.rate.as_ref().and_then(|r| parse_rate(r.get_ref()));
            // Shared: the key's rate and requests in flight are a zone in Redis, keyed by the secret's
            // digest.
            let zone_name = format!("api_key:{name}");
            let shared_zone =
                shared.map(|store| Arc::new(SharedZone::new(store.clone(), &zone_name, true, SharedFallback::Local)));
            let limits = rate
                .map(|rate| {
                    let zone = kept
                        .and_then(|k| k.limits.first())
                        .map(|l| l.zone.clone())
                        .filter(|zone| zone.same_settings(rate, 1, false))
                        .unwrap_or_else(|| Arc::new(Zone::new(rate, 1, false)));
                    RateLimit {
                        zone_name: zone_name.clone(),
                        zone,
                        key: ZoneKey::ApiKey,
                        limit: Limit { burst: config.burst, delay: None },
                        status: StatusCode::TOO_MANY_REQUESTS,
                        shared: shared_zone.clone(),
                    }
                })
                .into_iter()
                .collect();
            let conn_limits = config
                .max_concurrent
                .map(|max| ConnLimit {
                    counter: kept
                        .and_then(|k| k.conn_limits.first())
                        .map(|l| l.counter.clone())
                        .unwrap_or_else(|| Arc::new(ConnCounter::default())),
                    key: ZoneKey::ApiKey,
                    max,
                    status: StatusCode::TOO_MANY_REQUESTS,
                    shared: shared_zone.clone(),
                })
                .into_iter()
                .collect();
            let key = Arc::new(ApiKey {
                team: config.team.clone(),
                digest,
                models: config.models.iter().map(|m| m.get_ref().clone()).collect(),
                limits,
                conn_limits,
                priority: match config.priority {
                    KeyPriority::High => 2,
                    KeyPriority::Normal => 1,
                    KeyPriority::Low => 0,
                },
                client_priority: config.client_priority,
                expires: config.expires.as_ref().and_then(|e| parse_time(e.get_ref())),
                disabled: config.disabled,
                budgets: kept.and_then(|k| k.budgets.clone()).filter(|b| b.same(&config.budgets(), shared)).or_else(
                    || KeyBudgets::new(config.budgets(), shared.map(|store| (store, name.as_str()))).map(Arc::new),
                ),
                usage: store.usage.key(&name),
                name,
            });
            store.by_prefix.entry(prefix(&digest)).or_default().push(key.clone());
            store.keys.push(key);
        }
        store
    }

    /// The keys in config order.
    pub(crate) fn keys(&self) -> &[Arc<ApiKey>] {
        &self.keys
    }

    /// What every key used since start.
    pub(crate) fn usage(&self) -> &UsageBook {
        &self.usage
    }

    /// The label `model`'s usage is counted under.
    pub(crate) fn model_label(&self, model: &str) -> Arc<str> {
        self.labels.label(model)
    }

    /// The key whose secret is `secret`, if any.
    fn find(&self, secret: &[u8]) -> Option<Arc<ApiKey>> {
        RECENT.with(|recent| {
            let mut recent = recent.borrow_mut();
            if recent.generation != self.generation {
                recent.generation = self.generation;
                recent.entries.clear();
            }
            let hash = recent.hasher.hash_one(secret);
            if let Some((kept, key)) = recent.entries.get(&hash) {
                if verify_slices_are_equal(kept, secret).is_ok() {
                    return Some(key.clone());
                }
            }
            let found = self.find_by_digest(secret)?.clone();
            if recent.entries.len() >= RECENT_KEYS {
                recent.entries.clear();
            }
            recent.entries.insert(hash, (secret.into(), found.clone()));
            Some(found)
        })
    }

    /// The key whose digest is the secret's, hashing it.
    fn find_by_digest(&self, secret: &[u8]) -> Option<&Arc<ApiKey>> {
        let presented = digest(&SHA256, secret);
        let presented: &[u8] = presented.as_ref();
        let candidates = self.by_prefix.get(&prefix(presented))?;
        candidates.iter().find(|key| verify_slices_are_equal(&key.digest, presented).is_ok())
    }

    /// The key of a request to an authenticated location, or why it is refused; `now` is read only
    /// for a key that expires.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        now: impl FnOnce() -> SystemTime,
    ) -> Result<Arc<ApiKey>, GatewayError> {
        let presented = policy::api_key(headers);
        let key = presented.and_then(|secret| self.find(secret));
        verdict(presented.is_some(), key.as_deref(), now).map_err(GatewayError::KeyRefused)?;
        key.ok_or(GatewayError::KeyRefused(KeyRefusal::Unknown))
    }
}

/// Whether a request may pass, from what it presented and the key found for it: the decision alone,
/// without headers or clocks, so every case is a row of a table.
fn verdict(presented: bool, key: Option<&ApiKey>, now: impl FnOnce() -> SystemTime) -> Result<(), KeyRefusal> {
    let Some(key) = key else {
        return Err(if presented { KeyRefusal::Unknown } else { KeyRefusal::Missing });
    };
    if key.disabled {
        return Err(KeyRefusal::Disabled);
    }
    if key.expires.is_some_and(|expires| now() >= expires) {
        return Err(KeyRefusal::Expired);
    }
    Ok(())
}

fn prefix(digest: &[u8]) -> u64 {
    u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
}

/// A new key for `name`: its secret, to be shown once, and the `[[api_key]]` table to add to the
/// config (or its keys file), which holds only the secret's digest.
pub(crate) fn new_key(name: &str) -> Result<(String, String), String> {
    if name.trim().is_empty() {
        return Err("a key needs a name".into());
    }
    let secret = new_secret().map_err(|_| "the system's random source failed".to_string())?;
    let table =
        format!("[[api_key]]\nname = {}\nsha256 = \"{}\"\n", toml::Value::String(name.into()), digest_hex(&secret));
    Ok((secret, table))
}

/// A new secret: 32 random bytes, URL-safe base64, with a prefix that says what it is.
fn new_secret() -> Result<String, aws_lc_rs::error::Unspecified> {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(format!("ig-{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// The SHA-256 of a secret, as `sha256` in `[[api_key]]` writes it.
fn digest_hex(secret: &str) -> String {
    digest(&SHA256, secret.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(disabled: bool, expires: Option<SystemTime>) -> ApiKey {
        ApiKey {
            name: "k".into(),
            team: None,
            digest: [0; 32],
            models: vec!["glm-*".into(), "qwen2-vl".into()],
            limits: Vec::new(),
            conn_limits: Vec::new(),
            priority: 1,
            client_priority: false,
            expires,
            disabled,
            budgets: None,
            usage: UsageBook::default().key("k"),
        }
    }

    #[test]
    fn verdicts_follow_the_table() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let past = Some(now - Duration::from_secs(1));
        let future = Some(now + Duration::from_secs(1));
        let rows: [(bool, Option<ApiKey>, Result<(), KeyRefusal>); 7] = [
            (false, None, Err(KeyRefusal::Missing)),
            (true, None, Err(KeyRefusal::Unknown)),
            (true, Some(key(false, None)), Ok(())),
            (true, Some(key(false, future)), Ok(())),
            (true, Some(key(false, Some(now))), Err(KeyRefusal::Expired)),
            (true, Some(key(false, past)), Err(KeyRefusal::Expired)),
            (true, Some(key(true, future)), Err(KeyRefusal::Disabled)),
        ];
        for (presented, key, expected) in rows {
            assert_eq!(verdict(presented, key.as_ref(), || now), expected, "presented {presented}");
        }
    }

    #[test]
    fn model_globs_match_runs_of_characters() {
        let key = key(false, None);
        assert!(key.allows_model("glm-4.6v-flash") && key.allows_model("glm-") && key.allows_model("qwen2-vl"));
        assert!(!key.allows_model("qwen2-vl-7b") && !key.allows_model("llama") && !key.allows_model("xglm-4"));
        assert!(key.limits_models());
    }

    #[test]
    fn a_key_is_found_by_its_secret_and_a_new_secret_is_its_digest_s() {
        let secret = new_secret().unwrap();
        assert!(secret.starts_with("ig-") && secret.len() == 46, "{secret}");
        assert_ne!(new_secret().unwrap(), secret);
        let text = format!("[[api_key]]\nname = \"a\"\nsha256 = \"{}\"\n", digest_hex(&secret));
        let source = crate::config::Source { name: "k.toml".into(), dir: Default::default(), text };
        let (configs, errors) = crate::config::parse_keys(&source);
        assert!(errors.is_empty(), "{errors:?}");
        let store = KeyStore::build(&configs, None, [], None);
        assert_eq!(store.find(secret.as_bytes()).map(|k| k.name.clone()), Some("a".to_string()));
        assert_eq!(store.find(secret.as_bytes()).map(|k| k.name.clone()), Some("a".to_string()), "from the cache");
        assert!(store.find(b"ig-wrong").is_none());
        // A worker's cache never outlives the store it came from: a rebuild without the key revokes it.
        let revoked = KeyStore::build(&[], Some(&store), [], None);
        assert!(revoked.find(secret.as_bytes()).is_none());
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", secret.parse().unwrap());
        assert!(store.authenticate(&headers, SystemTime::now).is_ok());
    }
}
