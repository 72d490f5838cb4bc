//! Upstream servers found by DNS (`resolve = true`: a name's A and AAAA records, with the port the
//! config gives; `srv = true`: a name's SRV records, each target's addresses with the record's
//! port). Each answer is asked again when its TTL runs out (between 1 s and 5 minutes; 5 s after a
//! failure, which keeps the last answer). Resolved by hickory-resolver, from the system's
//! `/etc/resolv.conf` or the server `[http] resolver` names.
//!
//! The answers are read when a config is compiled: a server entry becomes one server per address.
//! When an answer changes, the gateway compiles its config again (`server::Gateway`), as a reload
//! does: servers that appear join; servers that vanish get no new requests and their streams finish.

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// What is looked up for one server entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Lookup {
    /// A and AAAA records of `host`, with `port`.
    Address { host: String, port: u16 },
    /// SRV records of a name: targets and ports.
    Service(String),
}

/// The last answer to a lookup, and when to ask again.
struct Answer {
    addrs: Vec<SocketAddr>,
    due: Instant,
}

/// Bounds of how long an answer is kept, whatever its TTL says.
const SHORTEST: Duration = Duration::from_secs(1);
const LONGEST: Duration = Duration::from_secs(300);
/// After a failed lookup (the last answer stays), the next try.
const AFTER_FAILURE: Duration = Duration::from_secs(5);

/// The lookups of a config and their answers; kept across reloads while `[http] resolver` stays.
pub(crate) struct Discovery {
    /// `[http] resolver`, else the system's configuration.
    nameserver: Option<SocketAddr>,
    resolver: tokio::sync::OnceCell<Option<TokioResolver>>,
    answers: Mutex<HashMap<Lookup, Option<Answer>>>,
}

impl Discovery {
    /// Lookups asked of `nameserver` (`None`: the system's).
    pub(crate) fn new(nameserver: Option<SocketAddr>) -> Discovery {
        Discovery { nameserver, resolver: tokio::sync::OnceCell::new(), answers: Mutex::new(HashMap::new()) }
    }

    /// The server it asks.
    pub(crate) fn nameserver(&self) -> Option<SocketAddr> {
        self.nameserver
    }

    /// Keeps exactly `lookups` (a config's), with the answers they have.
    pub(crate) fn keep(&self, lookups: impl IntoIterator<Item = Lookup>) {
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kept = HashMap::new();
        for lookup in lookups {
            let answer = answers.remove(&lookup).flatten();
            kept.insert(lookup, answer);
        }
        *answers = kept;
    }

    /// The addresses `lookup` last resolved to (none before its first answer).
    pub(crate) fn addresses(&self, lookup: &Lookup) -> Vec<SocketAddr> {
        let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        answers.get(lookup).and_then(Option::as_ref).map_or_else(Vec::new, |answer| answer.addrs.clone())
    }

    /// When the next lookup is due (`None`: there are none).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        answers.values().map(|answer| answer.as_ref().map_or_else(Instant::now, |a| a.due)).min()
    }

    /// Asks again what is due (or never answered); whether any set of addresses changed.
    pub(crate) async fn refresh(&self) -> bool {
        let now = Instant::now();
        let due: Vec<Lookup> = {
            let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            answers.iter().filter(|(_, a)| a.as_ref().is_none_or(|a| a.due <= now)).map(|(l, _)| l.clone()).collect()
        };
        if due.is_empty() {
            return false;
        }
        let Some(resolver) = self.resolver().await else { return false };
        let mut changed = false;
        for lookup in due {
            let resolved = resolve(resolver, &lookup).await;
            let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(slot) = answers.get_mut(&lookup) else { continue };
            match resolved {
                Ok((mut addrs, valid)) => {
                    addrs.sort();
                    addrs.dedup();
                    changed |= slot.as_ref().is_none_or(|old| old.addrs != addrs);
                    *slot = Some(Answer { addrs, due: Instant::now() + valid.clamp(SHORTEST, LONGEST) });
                }
                Err(error) => {
                    tracing::warn!(?lookup, %error, "DNS lookup failed; the last answer stays");
                    let addrs = slot.take().map_or_else(Vec::new, |old| old.addrs);
                    *slot = Some(Answer { addrs, due: Instant::now() + AFTER_FAILURE });
                }
            }
        }
        changed
    }

    async fn resolver(&self) -> Option<&TokioResolver> {
        let made = self
            .resolver
            .get_or_init(|| async {
                let builder = match self.nameserver {
                    Some(addr) => {
                        let mut connection = ConnectionConfig::udp();
                        connection.port = addr.port();
                        let mut server = NameServerConfig::udp(addr.ip());
                        server.connections = vec![connection];
                        let mut config = ResolverConfig::default();
                        config.add_name_server(server);
                        Ok(TokioResolver::builder_with_config(config, TokioRuntimeProvider::default()))
                    }
                    None => TokioResolver::builder_tokio(),
                };
                match builder.and_then(|builder| builder.build()) {
                    Ok(resolver) => Some(resolver),
                    Err(error) => {
                        tracing::error!(%error, "cannot make a DNS resolver: servers by name are not found");
                        None
                    }
                }
            })
            .await;
        made.as_ref()
    }
}

/// One lookup's addresses and how long they hold.
async fn resolve(resolver: &TokioResolver, lookup: &Lookup) -> Result<(Vec<SocketAddr>, Duration), String> {
    let until = |valid: std::time::Instant| valid.saturating_duration_since(std::time::Instant::now());
    match lookup {
        Lookup::Address { host, port } => {
            let answer = resolver.lookup_ip(host.as_str()).await.map_err(|e| e.to_string())?;
            Ok((answer.iter().map(|ip| SocketAddr::new(ip, *port)).collect(), until(answer.valid_until())))
        }
        Lookup::Service(name) => {
            let answer = resolver.srv_lookup(name.as_str()).await.map_err(|e| e.to_string())?;
            let mut valid = until(answer.valid_until());
            let mut addrs = Vec::new();
            let services = answer.answers().iter().filter_map(|record| match &record.data {
                RData::SRV(service) => Some(service),
                _ => None,
            });
            for service in services {
                let target = resolver.lookup_ip(service.target.clone()).await.map_err(|e| e.to_string())?;
                valid = valid.min(until(target.valid_until()));
                addrs.extend(target.iter().map(|ip| SocketAddr::new(ip, service.port)));
            }
            Ok((addrs, valid))
        }
    }
}
