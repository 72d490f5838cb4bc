//! Checks that need the whole parsed file: references between tables, one-of rules and duplicates.
//! Everything found is reported at once, each error at the place the user must edit.

use super::load::{ConfigError, ConfigErrors, Source};
use super::schema::{ApiKeyConfig, CompressConfig, Config, LocationConfig};
use super::values::{parse_net, parse_rate, parse_sha256, parse_time, Balance, Encoding, HashKey, ServerAddr, ZoneKey};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

/// Parses a `listen` entry: `ip:port`, `[v6]:port`, or a bare port meaning every IPv4 address.
pub(crate) fn parse_listen(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Some(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    text.parse().ok()
}

/// Key names and digests met so far, across the config and its keys file.
#[derive(Default)]
pub(crate) struct KeysSeen {
    names: HashSet<String>,
    digests: HashSet<[u8; 32]>,
}

/// Checks `[[api_key]]` tables of `source`: unique names and digests (with those `seen` before),
/// 64-digit digests, rates, RFC 3339 expiries, a concurrency cap above zero.
pub(crate) fn validate_keys(keys: &[ApiKeyConfig], source: &Source, seen: &mut KeysSeen) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for key in keys {
        let name = key.name.get_ref();
        if name.is_empty() || !seen.names.insert(name.clone()) {
            errors.push(source.error(key.name.span(), format!("duplicate or empty api_key name `{name}`")));
        }
        match parse_sha256(key.sha256.get_ref()) {
            None => errors.push(source.error(
                key.sha256.span(),
                "sha256 must be 64 hexadecimal digits (`infergate key new NAME` prints a key and its digest)",
            )),
            Some(digest) if !seen.digests.insert(digest) => {
                errors.push(source.error(key.sha256.span(), format!("api_key `{name}` has the digest of another key")))
            }
            Some(_) => {}
        }
        if let Some(rate) = &key.rate {
            if parse_rate(rate.get_ref()).is_none() {
                errors.push(source.error(
                    rate.span(),
                    format!("invalid rate {:?} (expected e.g. \"10r/s\" or \"600r/m\")", rate.get_ref()),
                ));
            }
        }
        if let Some(expires) = &key.expires {
            if parse_time(expires.get_ref()).is_none() {
                errors.push(source.error(
                    expires.span(),
                    format!(
                        "invalid expires {:?} (expected RFC 3339, e.g. \"2027-01-01T00:00:00Z\")",
                        expires.get_ref()
                    ),
                ));
            }
        }
        if key.budgets().iter().any(|(_, _, limit)| *limit == 0) {
            errors.push(source.error(key.span.clone(), format!("api_key `{name}`: token budgets must be above zero")));
        }
        if key.max_concurrent == Some(0) {
            errors.push(source.error(key.span.clone(), format!("api_key `{name}`: max_concurrent must be above zero")));
        }
    }
    errors
}

/// Runs every whole-file check and returns all errors found.
pub(crate) fn validate(config: &Config, source: &Source) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    for cost in &config.image_costs {
        if *cost.token_side.get_ref() == 0 {
            errors.push(source.error(cost.token_side.span(), "image_cost: token_side must be above zero"));
        }
        if cost.models.get_ref().is_empty() {
            errors.push(source.error(cost.models.span(), "image_cost: `models` must name at least one glob"));
        }
    }
    for location in config.servers.iter().flat_map(|server| &server.locations) {
        if let Some(interval) = location.sse_keepalive.as_ref().filter(|interval| interval.get_ref().0.is_zero()) {
            errors.push(source.error(interval.span(), "sse_keepalive must be above zero"));
        }
        if let Some(spanned) = &location.images.resize {
            let resize = spanned.get_ref();
            if !["keep", "png", "jpeg", "webp"].contains(&resize.format.get_ref().as_str()) {
                let message =
                    format!("images.resize.format: `{}` (expected keep, png, jpeg or webp)", resize.format.get_ref());
                errors.push(source.error(resize.format.span(), message));
            }
            if resize.max_side == Some(0)
                || resize.max_pixels == Some(0)
                || (resize.max_side, resize.max_pixels) == (None, None)
            {
                let message = "images.resize needs max_side or max_pixels, above zero";
                errors.push(source.error(spanned.span(), message));
            }
        }
        if !["refuse", "fetch"].contains(&location.images.remote.get_ref().as_str()) {
            let message = format!("images.remote: `{}` (expected refuse or fetch)", location.images.remote.get_ref());
            errors.push(source.error(location.images.remote.span(), message));
        }
        let model_formats = location.images.models.values().flat_map(|bounds| bounds.formats.iter().flatten());
        for format in location.images.formats.get_ref().iter().chain(model_formats) {
            if crate::images::Format::named(format).is_none() {
                errors.push(source.error(
                    location.images.formats.span(),
                    format!("images.formats: unknown format `{format}` (expected png, jpeg, webp or gif)"),
                ));
            }
        }
    }
    let mut upstream_names = HashSet::new();
    for upstream in &config.upstreams {
        let name = upstream.name.get_ref();
        if !upstream_names.insert(name.as_str()) {
            errors.push(
                source.error(upstream.name.span(), format!("duplicate upstream `{name}` (names must be unique)")),
            );
        }
        if upstream.servers.is_empty() {
            errors.push(source.error(
                upstream.name.span(),
                format!("upstream `{name}` has no servers (expected at least one `{{ addr = \"host:port\" }}`)"),
            ));
        }
        if let Some(fallback) = &upstream.fallback {
            let target = config.upstreams.iter().find(|other| other.name.get_ref() == fallback.get_ref());
            match target {
                None if !config.upstreams_incomplete => errors.push(source.error(
                    fallback.span(),
                    format!("unknown fallback upstream `{}` (define it as an [[upstream]])", fallback.get_ref()),
                )),
                Some(other) if other.name.get_ref() == name => {
                    errors.push(source.error(fallback.span(), "an upstream cannot be its own fallback"))
                }
                Some(other) if other.fallback.is_some() => errors.push(source.error(
                    fallback.span(),
                    format!("fallback upstream `{}` has a fallback of its own (one step only)", fallback.get_ref()),
                )),
                _ => {}
            }
        }
        if upstream.tls.cert.is_some() != upstream.tls.key.is_some() {
            errors.push(
                source.error(upstream.name.span(), "tls: a client `cert` needs its `key`, and a `key` its `cert`"),
            );
        }
        check_headers(&BTreeMap::new(), &upstream.proxy_set_header, &[], &upstream.name.span(), source, &mut errors);
        if let Some(health) = &upstream.health {
            if !health.path.get_ref().starts_with('/') {
                errors.push(source.error(health.path.span(), "health.path must start with `/`"));
            }
            for status in &health.expect {
                if !(100..=599).contains(status.get_ref()) {
                    errors.push(
                        source.error(status.span(), format!("invalid status {} (expected 100-599)", status.get_ref())),
                    );
                }
            }
            if health.rise == 0 || health.fall == 0 || health.interval.0.is_zero() {
                errors.push(source.error(health.path.span(), "health: rise, fall and interval must be above zero"));
            }
        }
        match (&upstream.hash_key, upstream.balance) {
            (Some(key), Balance::Hash) if HashKey::parse(key.get_ref()).is_none() => {
                errors.push(source.error(
                    key.span(),
                    format!(
                        "invalid hash_key {:?} (expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\")",
                        key.get_ref()
                    ),
                ));
            }
            (None, Balance::Hash) => {
                errors.push(source.error(upstream.name.span(), "balance = \"hash\" needs a hash_key"));
            }
            (Some(key), balance) if balance != Balance::Hash => {
                errors.push(source.error(key.span(), "hash_key applies only with balance = \"hash\""));
            }
            _ => {}
        }
        for server in &upstream.servers {
            if *server.weight.get_ref() == 0 {
                errors.push(source.error(server.weight.span(), "weight must be at least 1"));
            }
            if let Some(max) = &server.max_inflight {
                if *max.get_ref() == 0 {
                    errors
                        .push(source.error(max.span(), "max_inflight must be at least 1 (leave it out for no limit)"));
                }
            }
            if let Some(max) = server.max_inflight_tokens.as_ref().filter(|max| *max.get_ref() == 0) {
                errors.push(
                    source.error(max.span(), "max_inflight_tokens must be at least 1 (leave it out for no limit)"),
                );
            }
            let srv = *server.srv.get_ref();
            if *server.resolve.get_ref() && srv {
                errors.push(source.error(server.srv.span(), "a server is `resolve` (A/AAAA) or `srv`, not both"));
            } else if srv && !server.addr.get_ref().starts_with('_') {
                let message = format!(
                    "an `srv` server names SRV records, as `_service._proto.name` (not {:?})",
                    server.addr.get_ref()
                );
                errors.push(source.error(server.addr.span(), message));
            } else if !srv && ServerAddr::parse(server.addr.get_ref()).is_none() {
                errors.push(source.error(
                    server.addr.span(),
                    format!(
                        "invalid upstream server address {:?} (expected host:port or https://host[:port])",
                        server.addr.get_ref()
                    ),
                ));
            }
        }
    }

    let admin = &config.admin;
    if admin.enabled {
        match parse_listen(admin.listen.get_ref()) {
            None => errors.push(source.error(
                admin.listen.span(),
                format!("invalid admin listen address {:?} (expected ip:port)", admin.listen.get_ref()),
            )),
            Some(addr) if !addr.ip().is_loopback() && admin.token.as_deref().is_none_or(str::is_empty) => {
                errors.push(source.error(
                    admin.listen.span(),
                    format!("refusing to serve the admin API on {addr} without a token (set `token`, or listen on 127.0.0.1)"),
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(error_log) = &config.http.error_log {
        let level = error_log.level.get_ref();
        if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
            errors.push(source.error(
                error_log.level.span(),
                format!("unknown error_log level {level:?} (expected \"error\", \"warn\", \"info\", \"debug\" or \"trace\")"),
            ));
        }
    }
    for entry in &config.http.trusted_proxies {
        if parse_net(entry.get_ref()).is_none() {
            errors.push(source.error(
                entry.span(),
                format!(
                    "invalid trusted proxy {:?} (expected a CIDR like \"10.0.0.0/8\" or an address)",
                    entry.get_ref()
                ),
            ));
        }
    }
    let mut zone_names = HashSet::new();
    let mut rated_zones = HashSet::new();
    for (name, zone) in &config.limit_zones {
        zone_names.insert(name.get_ref().as_str());
        if zone.rate.is_some() {
            rated_zones.insert(name.get_ref().as_str());
        }
        if ZoneKey::parse(zone.key.get_ref()).is_none() {
            errors.push(source.error(
                zone.key.span(),
                format!(
                    "invalid zone key {:?} (expected \"client_ip\", \"api_key\" or \"header:NAME\")",
                    zone.key.get_ref()
                ),
            ));
        }
        if let Some(rate) = &zone.rate {
            if parse_rate(rate.get_ref()).is_none() {
                let message = format!("invalid rate {:?} (expected e.g. \"10r/s\" or \"600r/m\")", rate.get_ref());
                errors.push(source.error(rate.span(), message));
            }
        }
        if !(400..=599).contains(zone.status.get_ref()) {
            errors.push(source.error(
                zone.status.span(),
                format!("invalid rejection status {} (expected 400-599)", zone.status.get_ref()),
            ));
        }
        if zone.max_keys == 0 {
            errors.push(source.error(name.span(), "max_keys must be at least 1"));
        }
        if *zone.shared.get_ref() && config.redis.is_none() {
            let message = "a shared zone needs `[redis]` (its `url`) to keep its counts in";
            errors.push(source.error(zone.shared.span(), message));
        }
    }
    for upstream in &config.upstreams {
        let shared = &upstream.shared_admission;
        if *shared.get_ref() && config.redis.is_none() {
            errors.push(source.error(shared.span(), "shared admission needs `[redis]` (its `url`) to lease slots in"));
        } else if *shared.get_ref() && upstream.servers.iter().all(|server| server.max_inflight.is_none()) {
            errors.push(source.error(shared.span(), "shared admission shares `max_inflight`, and no server sets one"));
        }
    }
    if let Some(resolver) = &config.http.resolver {
        if resolver.get_ref().parse::<SocketAddr>().is_err() {
            let message = format!("invalid resolver {:?} (expected IP:PORT, e.g. \"10.0.0.2:53\")", resolver.get_ref());
            errors.push(source.error(resolver.span(), message));
        }
    }
    if let Some(redis) = &config.redis {
        if let Err(error) = redis::IntoConnectionInfo::into_connection_info(redis.url.get_ref().as_str()) {
            let message = format!("invalid Redis URL: {error} (expected redis://[USER:PASSWORD@]HOST:PORT[/DB])");
            errors.push(source.error(redis.url.span(), message));
        }
        if redis.timeout.0.is_zero() {
            errors.push(source.error(redis.url.span(), "[redis] timeout must be above zero"));
        }
        if redis.lease_ttl.0 < std::time::Duration::from_millis(300) {
            errors.push(source.error(redis.url.span(), "[redis] lease_ttl must be at least 300ms"));
        }
    }

    // Per address: whether it speaks TLS, which names it serves and whether it has a declared default.
    struct Listener<'a> {
        tls: bool,
        names: HashSet<&'a str>,
        has_default: bool,
    }
    let mut listeners: HashMap<SocketAddr, Listener> = HashMap::new();
    for server in &config.servers {
        if server.listen.is_empty() {
            errors.push(source.error(
                server.span.clone(),
                "server has no `listen` addresses (expected e.g. listen = [\"127.0.0.1:8000\"])",
            ));
        }
        let mut own = HashSet::new();
        for listen in &server.listen {
            let Some(addr) = parse_listen(listen.get_ref()) else {
                errors.push(source.error(
                    listen.span(),
                    format!("invalid listen address {:?} (expected ip:port, [ipv6]:port or a port)", listen.get_ref()),
                ));
                continue;
            };
            if !own.insert(addr) {
                errors.push(source.error(listen.span(), format!("duplicate listener {addr} in this server")));
                continue;
            }
            let tls = server.tls.is_some();
            let entry = listeners.entry(addr).or_insert(Listener { tls, names: HashSet::new(), has_default: false });
            if entry.tls != tls {
                errors.push(source.error(listen.span(), format!("listener {addr} is TLS in one server and plain in another (every server on one address must agree)")));
            }
            if server.default_server {
                if entry.has_default {
                    errors.push(source.error(listen.span(), format!("duplicate default server for {addr}")));
                }
                entry.has_default = true;
            }
            for name in &server.server_name {
                if !entry.names.insert(name.as_str()) {
                    errors.push(source.error(
                        listen.span(),
                        format!(
                            "duplicate listener: server name `{name}` on {addr} is already served by another server"
                        ),
                    ));
                }
            }
        }
        if let Some(tls) = &server.tls {
            for protocol in &tls.protocols {
                if !matches!(protocol.get_ref().as_str(), "1.2" | "1.3") {
                    errors.push(source.error(
                        protocol.span(),
                        format!("unknown TLS protocol {:?} (expected \"1.2\" or \"1.3\")", protocol.get_ref()),
                    ));
                }
            }
            if tls.protocols.is_empty() {
                errors.push(
                    source.error(server.span.clone(), "tls.protocols is empty (expected \"1.2\" and/or \"1.3\")"),
                );
            }
        }
        check_headers(
            &server.add_header,
            &server.proxy_set_header,
            &server.proxy_hide_header,
            &server.span,
            source,
            &mut errors,
        );
        if let Some(compress) = &server.compress {
            check_compress(compress, source, &mut errors);
        }
        for location in &server.locations {
            validate_location(location, &upstream_names, config.upstreams_incomplete, source, &mut errors);
            for limit in &location.limit_req {
                let zone = limit.zone.get_ref().as_str();
                if !zone_names.contains(zone) {
                    let message = format!("unknown limit zone `{zone}` (define it as [limit_zone.{zone}])");
                    errors.push(source.error(limit.zone.span(), message));
                } else if !rated_zones.contains(zone) {
                    errors.push(
                        source.error(
                            limit.zone.span(),
                            format!("limit zone `{zone}` has no `rate` (limit_req needs one)"),
                        ),
                    );
                }
            }
            for limit in &location.limit_conn {
                let zone = limit.zone.get_ref().as_str();
                if !zone_names.contains(zone) {
                    let message = format!("unknown limit zone `{zone}` (define it as [limit_zone.{zone}])");
                    errors.push(source.error(limit.zone.span(), message));
                }
                if *limit.max.get_ref() == 0 {
                    errors.push(source.error(limit.max.span(), "limit_conn max must be at least 1"));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Parses a canary `header`: `Name: value`.
pub(crate) fn parse_header_match(text: &str) -> Option<(http::HeaderName, http::HeaderValue)> {
    let (name, value) = text.split_once(':')?;
    Some((http::HeaderName::from_bytes(name.trim().as_bytes()).ok()?, http::HeaderValue::from_str(value.trim()).ok()?))
}

/// Checks `add_header`, `proxy_set_header` and `proxy_hide_header` of a server or location.
fn check_headers(
    add: &BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
    hide: &[String],
    span: &std::ops::Range<usize>,
    source: &Source,
    errors: &mut Vec<ConfigError>,
) {
    let names = add
        .keys()
        .map(|n| ("add_header", n))
        .chain(set.keys().map(|n| ("proxy_set_header", n)))
        .chain(hide.iter().map(|n| ("proxy_hide_header", n)));
    for (key, name) in names {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(source.error(span.clone(), format!("invalid header name {name:?} in {key}")));
        }
    }
    for (key, (name, value)) in add.iter().map(|h| ("add_header", h)).chain(set.iter().map(|h| ("proxy_set_header", h)))
    {
        if http::HeaderValue::from_str(value).is_err() {
            errors.push(
                source.error(
                    span.clone(),
                    format!("invalid value for header {name:?} in {key} (visible ASCII expected)"),
                ),
            );
        }
    }
}

fn check_compress(compress: &CompressConfig, source: &Source, errors: &mut Vec<ConfigError>) {
    for encoding in &compress.encodings {
        if Encoding::parse(encoding.get_ref()).is_none() {
            errors.push(source.error(
                encoding.span(),
                format!("unknown coding {:?} (expected \"zstd\", \"br\" or \"gzip\")", encoding.get_ref()),
            ));
        }
    }
    let levels = [(&compress.gzip_level, 1..=9, "gzip_level"), (&compress.br_level, 0..=11, "br_level")];
    for (level, range, key) in levels {
        if !range.contains(level.get_ref()) {
            let message = format!("{key} {} out of range ({}-{})", level.get_ref(), range.start(), range.end());
            errors.push(source.error(level.span(), message));
        }
    }
    if !(1..=19).contains(compress.zstd_level.get_ref()) {
        errors.push(source.error(
            compress.zstd_level.span(),
            format!("zstd_level {} out of range (1-19)", compress.zstd_level.get_ref()),
        ));
    }
}

fn validate_location(
    location: &LocationConfig,
    upstreams: &HashSet<&str>,
    upstreams_incomplete: bool,
    source: &Source,
    errors: &mut Vec<ConfigError>,
) {
    let span = location.span.clone();
    let matchers = [location.exact.is_some(), location.prefix.is_some(), location.regex.is_some()];
    if matchers.iter().filter(|m| **m).count() != 1 {
        errors.push(source.error(span.clone(), "a location needs exactly one of `exact`, `prefix` or `regex`"));
    }
    for path in [&location.exact, &location.prefix].into_iter().flatten() {
        if !path.starts_with('/') {
            errors.push(source.error(span.clone(), format!("location path {path:?} must start with `/`")));
        }
    }
    if let Some(regex) = &location.regex {
        if let Err(e) = regex::Regex::new(regex.get_ref()) {
            errors.push(source.error(regex.span(), format!("invalid regex: {e}")));
        }
    }
    if location.skip_regex && location.prefix.is_none() {
        errors.push(source.error(span.clone(), "`skip_regex` applies only to `prefix` locations"));
    }
    let handlers = [
        location.proxy.is_some(),
        location.return_.is_some(),
        location.redirect.is_some(),
        !location.models.is_empty(),
        location.root.is_some(),
        location.alias.is_some(),
        location.page.is_some(),
    ];
    if handlers.iter().filter(|h| **h).count() != 1 {
        let message =
            "a location needs exactly one handler: `proxy`, `models`, `return`, `redirect`, `root`, `alias` or `page`";
        errors.push(source.error(span.clone(), message));
    }
    if let (Some(alias), Some(_)) = (&location.alias, &location.regex) {
        errors
            .push(source.error(alias.span(), "`alias` needs a `prefix` or `exact` location (use `root` with `regex`)"));
    }
    let static_only = [
        location.index.is_some(),
        location.expires.is_some(),
        location.cache_control.is_some(),
        location.precompressed.is_some(),
        location.allow_symlinks_outside.is_some(),
    ];
    if static_only.contains(&true) && location.root.is_none() && location.alias.is_none() {
        let message =
            "`index`, `expires`, `cache_control`, `precompressed` and `allow_symlinks_outside` need `root` or `alias`";
        errors.push(source.error(span.clone(), message));
    }
    if let Some(directives) = &location.cache_control {
        if http::HeaderValue::from_str(directives).is_err() {
            errors.push(source.error(span.clone(), "invalid cache_control (visible ASCII expected)"));
        }
    }
    let mut total_weight = 0;
    for canary in &location.canary {
        if location.proxy.is_none() {
            errors.push(
                source
                    .error(canary.upstream.span(), "`canary` needs `proxy` on the same location (where the rest goes)"),
            );
        }
        if !upstreams.contains(canary.upstream.get_ref().as_str()) && !upstreams_incomplete {
            errors.push(
                source.error(
                    canary.upstream.span(),
                    format!("unknown upstream `{}` in canary", canary.upstream.get_ref()),
                ),
            );
        }
        total_weight += canary.weight;
        if let Some(header) = &canary.header {
            if parse_header_match(header.get_ref()).is_none() {
                errors.push(source.error(
                    header.span(),
                    format!("invalid canary header {:?} (expected \"Name: value\")", header.get_ref()),
                ));
            }
        }
    }
    if total_weight > 100 {
        errors
            .push(source.error(span.clone(), format!("canary weights add up to {total_weight} (at most 100 percent)")));
    }
    for upstream in location.models.values() {
        if !upstreams.contains(upstream.get_ref().as_str()) && !upstreams_incomplete {
            errors.push(source.error(upstream.span(), format!("unknown upstream `{}` in models", upstream.get_ref())));
        }
    }
    if let Some(proxy) = &location.proxy {
        if !upstreams.contains(proxy.get_ref().as_str()) && !upstreams_incomplete {
            let mut known: Vec<_> = upstreams.iter().copied().collect();
            known.sort_unstable();
            errors.push(source.error(
                proxy.span(),
                format!("unknown upstream `{}` (defined: {})", proxy.get_ref(), known.join(", ")),
            ));
        }
    }
    if let Some(api) = &location.page_api {
        if location.page.is_none() {
            errors.push(source.error(api.span(), "`page_api` needs `page` on the same location"));
        }
        if !api.get_ref().starts_with('/') || api.get_ref().contains(['?', '#']) {
            errors.push(
                source.error(api.span(), format!("page_api {:?} must be a path starting with `/`", api.get_ref())),
            );
        }
    }
    if let Some(ret) = &location.return_ {
        if !(100..=599).contains(ret.status.get_ref()) {
            errors.push(
                source.error(ret.status.span(), format!("invalid status {} (expected 100-599)", ret.status.get_ref())),
            );
        }
    }
    if let Some(redirect) = &location.redirect {
        if ![301, 302, 303, 307, 308].contains(redirect.status.get_ref()) {
            errors.push(source.error(
                redirect.status.span(),
                format!("invalid redirect status {} (expected 301, 302, 303, 307 or 308)", redirect.status.get_ref()),
            ));
        }
        if let Err(e) = crate::template::Template::parse(redirect.url.get_ref()) {
            errors.push(source.error(redirect.url.span(), e));
        }
    }
    check_headers(&location.add_header, &location.proxy_set_header, &location.proxy_hide_header, &span, source, errors);
    if let Some(compress) = &location.compress {
        check_compress(compress, source, errors);
    }
    if let Some(buffers) = &location.proxy_buffers {
        let valid = buffers
            .split_once(' ')
            .is_some_and(|(n, size)| n.parse::<u32>().is_ok() && super::Size::parse(size).is_some());
        if !valid {
            errors.push(
                source.error(
                    span,
                    format!("invalid proxy_buffers {buffers:?} (expected \"NUMBER SIZE\", e.g. \"8 32k\")"),
                ),
            );
        }
    }
}
