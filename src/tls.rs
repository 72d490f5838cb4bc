//! TLS for listeners, by rustls with the aws-lc-rs provider: certificates chosen by SNI (exact name,
//! then `*.` wildcard, then the listener's default server), TLS 1.2 and/or 1.3, ALPN `h2` and
//! `http/1.1`. rustls offers only AEAD suites with forward secrecy, which is stricter than the seed's
//! `ssl_ciphers HIGH:!aNULL:!MD5` (nginx there still offers CBC and static-RSA suites); the server's
//! order of preference wins over the client's (nginx's `ssl_prefer_server_ciphers on`), and
//! `ciphers` narrows and orders the list.

use crate::config::{ConfigError, Source, TlsConfig};
use crate::route::NameTable;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SupportedCipherSuite;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// One TLS server of a listener: its names and its certificate settings.
pub(crate) struct TlsSite<'a> {
    /// `server_name` entries.
    pub(crate) names: &'a [String],
    /// `tls = {...}`.
    pub(crate) tls: &'a TlsConfig,
}

/// Loads a certificate chain and key, with errors pointing at the config line that names the files.
pub(crate) fn load_certified_key(tls: &TlsConfig, source: &Source) -> Result<Arc<CertifiedKey>, ConfigError> {
    let cert_path = source.resolve(tls.cert.get_ref());
    let key_path = source.resolve(tls.key.get_ref());
    let chain = crate::pem::certificates(&cert_path).map_err(|e| source.error(tls.cert.span(), e))?;
    let key = crate::pem::private_key(&key_path).map_err(|e| source.error(tls.key.span(), e))?;
    let provider = aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| source.error(tls.key.span(), format!("certificate and key do not fit together: {e}")))?;
    Ok(Arc::new(certified))
}

/// Builds the acceptor of one listener. `sites[0]` is the listener's default server: its protocol
/// versions apply to the listener and its certificate answers unknown or missing SNI.
pub(crate) fn acceptor(sites: &[TlsSite], http2: bool, source: &Source) -> Result<TlsAcceptor, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut keys = Vec::new();
    for site in sites {
        match load_certified_key(site.tls, source) {
            Ok(key) => keys.push(key),
            Err(e) => errors.push(e),
        }
    }
    let default_tls = sites[0].tls;
    for site in &sites[1..] {
        let versions = |t: &TlsConfig| t.protocols.iter().map(|p| p.get_ref().clone()).collect::<Vec<_>>();
        let ciphers =
            |t: &TlsConfig| t.ciphers.as_ref().map(|c| c.iter().map(|c| c.get_ref().clone()).collect::<Vec<_>>());
        if versions(site.tls) != versions(default_tls) || ciphers(site.tls) != ciphers(default_tls) {
            errors.push(source.error(
                site.tls.cert.span(),
                "every TLS server on one address must offer the same `protocols` and `ciphers` as the address's default server",
            ));
        }
    }
    let provider = match cipher_suites(default_tls, source) {
        Ok(provider) => Some(provider),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut names = NameTable::new(keys[0].clone());
    for (site, key) in sites.iter().zip(&keys) {
        for name in site.names {
            names.add(name, key.clone());
        }
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = default_tls
        .protocols
        .iter()
        .map(|p| if p.get_ref() == "1.2" { &rustls::version::TLS12 } else { &rustls::version::TLS13 })
        .collect();
    let provider = Arc::new(provider.unwrap_or_else(aws_lc_rs::default_provider));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| vec![source.error(default_tls.cert.span(), format!("TLS setup failed: {e}"))])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { names }));
    config.ignore_client_order = true;
    config.alpn_protocols = if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    if let Ok(ticketer) = aws_lc_rs::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// aws-lc-rs with the listener's cipher suites: all it has (AEAD, forward secrecy), or the ones
/// `ciphers` names, in that order.
fn cipher_suites(tls: &TlsConfig, source: &Source) -> Result<CryptoProvider, ConfigError> {
    let mut provider = aws_lc_rs::default_provider();
    let Some(names) = &tls.ciphers else { return Ok(provider) };
    let known = |suite: &SupportedCipherSuite| suite.suite().as_str().unwrap_or_default();
    let mut chosen = Vec::with_capacity(names.len());
    for name in names {
        match provider.cipher_suites.iter().find(|suite| known(suite) == name.get_ref()) {
            Some(suite) => chosen.push(*suite),
            None => {
                let all: Vec<&str> = provider.cipher_suites.iter().map(known).collect();
                let message =
                    format!("unknown cipher suite {:?} (expected one of: {})", name.get_ref(), all.join(", "));
                return Err(source.error(name.span(), message));
            }
        }
    }
    if chosen.is_empty() {
        return Err(source.error(tls.cert.span(), "tls.ciphers is empty (leave it out for the default list)"));
    }
    provider.cipher_suites = chosen;
    Ok(provider)
}

#[derive(Debug)]
struct SniResolver {
    names: NameTable<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.names.select(hello.server_name()).clone())
    }
}
