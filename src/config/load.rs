//! Reading a config file: TOML syntax, then each table on its own so that one bad table does not hide
//! the errors of the others. Every error carries the file, line and column it points at.

use super::schema::{
    AdminConfig, ApiKeyConfig, Config, HttpSettings, ImageCostConfig, LimitZoneConfig, LocationConfig, RedisConfig,
    ServerConfig, UpstreamConfig,
};
use serde::Deserialize;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// The text of a config file and its name, kept so that any later step can turn a byte span into
/// `FILE:LINE:COL`.
#[derive(Debug, Clone)]
pub struct Source {
    /// Path as given by the user (or `<embedded default>`).
    pub name: String,
    /// Folder against which relative paths in the file (certificates) are resolved.
    pub dir: PathBuf,
    /// The whole file.
    pub text: String,
}

impl Source {
    /// Reads a file; an unreadable file is itself a config error.
    pub(crate) fn read(path: &Path) -> Result<Source, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                location: format!("{name}:1:1"),
                offset: 0,
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Source { name, dir, text })
    }

    /// An error about the bytes `span` of this file.
    pub(crate) fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(before.chars().count(), |nl| before[nl + 1..].chars().count()) + 1;
        ConfigError { location: format!("{}:{line}:{col}", self.name), offset: start, message: message.into() }
    }

    /// Resolves a path written in the file against the file's folder.
    pub(crate) fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.dir.join(path)
        }
    }
}

/// One problem in a config file, already located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `FILE:LINE:COL`
    pub(crate) location: String,
    /// Byte offset in the file, to report errors in file order.
    pub(crate) offset: usize,
    /// What is wrong, and what was expected.
    pub(crate) message: String,
}

/// Every problem found in a config file, in file order; printed one per line like `nginx -t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", e.location, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses a config text into its typed form, as far as it goes: every table that is valid on its own,
/// and every syntax and schema error found (in file order). Whether the file has syntax errors is
/// returned too, since then the whole-file checks would only add noise.
pub(crate) fn parse(source: &Source) -> (Config, Vec<ConfigError>, bool) {
    let (root, syntax_errors) = DeTable::parse_recoverable(&source.text);
    let syntax_ok = syntax_errors.is_empty();
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut push = |span: Range<usize>, message: String| errors.push(source.error(span, message));
    for e in syntax_errors {
        push(e.span().unwrap_or(0..0), format!("invalid TOML: {}", e.message()));
    }

    let mut config = Config::default();
    for (key, value) in root.into_inner() {
        let key_span = key.span();
        match key.get_ref().as_ref() {
            "http" => match decode::<HttpSettings>(value) {
                Ok(http) => config.http = http,
                Err((span, message)) => push(span, message),
            },
            "admin" => match decode::<AdminConfig>(value) {
                Ok(admin) => config.admin = admin,
                Err((span, message)) => push(span, message),
            },
            "redis" => match decode::<RedisConfig>(value) {
                Ok(redis) => config.redis = Some(redis),
                Err((span, message)) => push(span, message),
            },
            "upstream" => {
                for item in array_items(value, "upstream", &mut push) {
                    match decode::<UpstreamConfig>(item) {
                        Ok(upstream) => config.upstreams.push(upstream),
                        Err((span, message)) => {
                            config.upstreams_incomplete = true;
                            push(span, message);
                        }
                    }
                }
            }
            "server" => {
                for item in array_items(value, "server", &mut push) {
                    if let Some(server) = decode_server(item, &mut push) {
                        config.servers.push(server);
                    }
                }
            }
            "limit_zone" => {
                let span = value.span();
                match value.into_inner() {
                    DeValue::Table(zones) => {
                        for (name, zone) in zones {
                            match decode::<LimitZoneConfig>(zone) {
                                Ok(zone) => config
                                    .limit_zones
                                    .push((Spanned::new(name.span(), name.get_ref().to_string()), zone)),
                                Err((span, message)) => push(span, message),
                            }
                        }
                    }
                    _ => push(span, "`limit_zone` must be a table of zones written `[limit_zone.NAME]`".into()),
                }
            }
            "api_key" => config.api_keys.extend(decode_keys(value, &mut push)),
            "image_cost" => {
                for item in array_items(value, "image_cost", &mut push) {
                    match decode::<ImageCostConfig>(item) {
                        Ok(cost) => config.image_costs.push(cost),
                        Err((span, message)) => push(span, message),
                    }
                }
            }
            other => push(
                key_span,
                format!(
                    "unknown section `{other}` (expected `http`, `admin`, `redis`, `upstream`, `server`, \
                     `limit_zone`, `api_key` or `image_cost`)"
                ),
            ),
        }
    }
    errors.sort_by_key(|e| e.offset);
    (config, errors, syntax_ok)
}

/// Parses a keys file (`[http] api_keys_file`): `[[api_key]]` tables and nothing else.
pub(crate) fn parse_keys(source: &Source) -> (Vec<ApiKeyConfig>, Vec<ConfigError>) {
    let (root, syntax_errors) = DeTable::parse_recoverable(&source.text);
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut push = |span: Range<usize>, message: String| errors.push(source.error(span, message));
    for e in syntax_errors {
        push(e.span().unwrap_or(0..0), format!("invalid TOML: {}", e.message()));
    }
    let mut keys = Vec::new();
    for (key, value) in root.into_inner() {
        match key.get_ref().as_ref() {
            "api_key" => keys.extend(decode_keys(value, &mut push)),
            other => push(key.span(), format!("unknown section `{other}` in a keys file (expected `api_key`)")),
        }
    }
    (keys, errors)
}

/// The `[[api_key]]` tables, each with its place in the file.
fn decode_keys(value: Spanned<DeValue<'_>>, push: &mut impl FnMut(Range<usize>, String)) -> Vec<ApiKeyConfig> {
    let mut keys = Vec::new();
    for item in array_items(value, "api_key", push) {
        let span = item.span();
        match decode::<ApiKeyConfig>(item) {
            Ok(mut key) => {
                key.span = span;
                keys.push(key);
            }
            Err((span, message)) => push(span, message),
        }
    }
    keys
}

/// Deserializes one TOML value into `T`, turning serde's error into a span and a message.
fn decode<'de, T: Deserialize<'de>>(value: Spanned<DeValue<'de>>) -> Result<T, (Range<usize>, String)> {
    let whole = value.span();
    T::deserialize(ValueDeserializer::from(value)).map_err(|e| (e.span().unwrap_or(whole), e.message().to_string()))
}

/// The elements of `[[name]]`; anything else there is an error.
fn array_items<'de>(
    value: Spanned<DeValue<'de>>,
    name: &str,
    push: &mut impl FnMut(Range<usize>, String),
) -> Vec<Spanned<DeValue<'de>>> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(items) => items.into_iter().collect(),
        other => {
            push(
                span,
                format!("`{name}` must be an array of tables written `[[{name}]]`, found a {}", other.type_str()),
            );
            Vec::new()
        }
    }
}

/// A `[[server]]` table: its own keys, then each `[[server.location]]` on its own.
fn decode_server(item: Spanned<DeValue<'_>>, push: &mut impl FnMut(Range<usize>, String)) -> Option<ServerConfig> {
    let span = item.span();
    let DeValue::Table(mut table) = item.into_inner() else {
        push(span, "each `[[server]]` must be a table".into());
        return None;
    };
    let locations = table.remove("location");
    let server = decode::<ServerConfig>(Spanned::new(span.clone(), DeValue::Table(table)));
    let mut parsed_locations = Vec::new();
    if let Some(locations) = locations {
        for location in array_items(locations, "server.location", push) {
            let location_span = location.span();
            match decode::<LocationConfig>(location) {
                Ok(mut location) => {
                    location.span = location_span;
                    parsed_locations.push(location);
                }
                Err((span, message)) => push(span, message),
            }
        }
    }
    match server {
        Ok(mut server) => {
            server.locations = parsed_locations;
            server.span = span;
            Some(server)
        }
        Err((span, message)) => {
            push(span, message);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source { name: "t.toml".into(), dir: PathBuf::new(), text: text.into() }
    }

    #[test]
    fn reports_every_bad_table_with_line_and_column() {
        let text = "[[upstream]]\nname = \"a\"\nservers = []\nbogus = 1\n\n[[server]]\nlisten = [\"127.0.0.1:1\"]\n  [[server.location]]\n  prefix = \"/\"\n  proxxy = \"a\"\n";
        let errors = ConfigErrors(parse(&source(text)).1);
        assert_eq!(errors.0.len(), 2, "{errors}");
        assert!(errors.0[0].location.starts_with("t.toml:4:1"), "{errors}");
        assert!(errors.0[0].message.contains("unknown field `bogus`"), "{errors}");
        assert!(errors.0[1].location.starts_with("t.toml:10:3"), "{errors}");
        assert!(errors.0[1].message.contains("proxxy"), "{errors}");
    }

    #[test]
    fn bad_values_point_at_the_value() {
        let errors = ConfigErrors(parse(&source("[http]\nclient_header_timeout = \"soon\"\n")).1);
        assert_eq!(errors.0[0].location, "t.toml:2:25");
        assert!(errors.0[0].message.contains("invalid duration"), "{errors}");
    }

    #[test]
    fn syntax_errors_are_located() {
        let errors = ConfigErrors(parse(&source("[http\n")).1);
        assert!(errors.0[0].location.starts_with("t.toml:1:"), "{errors}");
        assert!(errors.0[0].message.starts_with("invalid TOML"), "{errors}");
    }
}
