//! The config file: its schema, how it is read with located errors, and the checks that need the whole
//! file. Compiling it into something that serves traffic is `runtime`'s job.

mod load;
mod schema;
mod units;
mod validate;
mod values;

pub(crate) use load::{parse, parse_keys};
pub use load::{ConfigError, ConfigErrors, Source};
pub use schema::*;
pub(crate) use units::Size;
pub(crate) use validate::{parse_header_match, parse_listen, validate, validate_keys};
pub(crate) use values::{
    parse_net, parse_rate, parse_sha256, parse_time, Balance, Encoding, HashKey, ServerAddr, ZoneKey,
};

/// The config used when no `--config` is given and `./infergate.toml` does not exist: the seed's model
/// service on 127.0.0.1:8080 behind a gateway on 127.0.0.1:8000.
pub(crate) const EMBEDDED_DEFAULT: &str = r#"
[[upstream]]
name = "model"
servers = [{ addr = "127.0.0.1:8080" }]

[[server]]
listen = ["127.0.0.1:8000"]

  [[server.location]]
  prefix = "/"
  proxy = "model"
"#;

/// Parses and validates a config source, reporting every error found in file order; the keys file
/// `[http] api_keys_file` names is read and checked with it, its errors located in it.
pub fn load(source: &Source) -> Result<Config, ConfigErrors> {
    let (mut config, mut errors, syntax_ok) = parse(source);
    if syntax_ok {
        if let Err(ConfigErrors(more)) = validate(&config, source) {
            errors.extend(more);
        }
        let mut seen = validate::KeysSeen::default();
        errors.extend(validate_keys(&config.api_keys, source, &mut seen));
        if let Some(file) = &config.http.api_keys_file {
            match Source::read(&source.resolve(file.get_ref())) {
                Ok(keys_source) => {
                    let (keys, keys_errors) = parse_keys(&keys_source);
                    errors.extend(keys_errors);
                    errors.extend(validate_keys(&keys, &keys_source, &mut seen));
                    config.api_keys.extend(keys);
                }
                Err(ConfigErrors(unreadable)) => errors.push(source.error(
                    file.span(),
                    format!("cannot read api_keys_file: {}", unreadable.first().map_or("", |e| e.message.as_str())),
                )),
            }
        }
    }
    if errors.is_empty() {
        return Ok(config);
    }
    errors.sort_by_key(|e| e.offset);
    errors.dedup();
    Err(ConfigErrors(errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_configs_load_or_report_located_errors() {
        let seeds = crate::fuzzing::seeds(
            "config",
            &[
                include_bytes!("../../examples/seed.toml"),
                include_bytes!("../../examples/demo.toml"),
                EMBEDDED_DEFAULT.as_bytes(),
            ],
        );
        arbtest::arbtest(|u| {
            let text = String::from_utf8_lossy(&crate::fuzzing::mutated(u, &seeds)?).into_owned();
            let source = Source { name: "fuzz.toml".into(), dir: std::path::PathBuf::from("."), text };
            if let Err(errors) = load(&source) {
                let report = errors.to_string();
                assert!(!errors.0.is_empty() && report.starts_with("fuzz.toml:"), "every error is located: {report}");
            }
            Ok(())
        });
    }
}
