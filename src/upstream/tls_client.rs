//! TLS to upstream servers written `https://`: rustls with the aws-lc-rs provider, the system's
//! root certificates unless the upstream names its own (`tls.ca`), the server's host name sent
//! (SNI) and checked against its certificate unless `tls.server_name` says another, and a client
//! certificate when `tls.cert` is set. It offers HTTP/2 and HTTP/1.1 (ALPN); a server that picks
//! HTTP/2 gets every request of this gateway's worker on one multiplexed connection (`pool`), one
//! that picks HTTP/1.1 the keep-alive pool of `http1`. A WebSocket upgrade is offered HTTP/1.1 alone.
//! Built once per upstream at config load; a handshake is part of connecting, within the connect
//! timeout, and its failure answers 502 as a refused connection does.

use super::connector::{ConnectError, TimedStream};
use crate::config::{Source, UpstreamTlsConfig};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::sync::{Arc, LazyLock};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How one upstream server is reached over TLS.
pub(crate) struct UpstreamTls {
    /// Offers HTTP/2 and HTTP/1.1.
    connector: TlsConnector,
    /// Offers HTTP/1.1 alone (upgrades).
    http1_only: TlsConnector,
    /// Sent and checked: `tls.server_name`, else the server's host.
    server_name: ServerName<'static>,
    /// What it was made of, to tell whether a reload may keep its connections.
    pub(crate) settings: UpstreamTlsConfig,
}

/// The system's roots, read once (a few hundred files on Debian); the ones that do not parse are
/// left out.
static SYSTEM_ROOTS: LazyLock<Arc<RootCertStore>> = LazyLock::new(|| {
    let mut roots = RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(loaded.certs);
    Arc::new(roots)
});

/// The client settings of an upstream's `tls` table (paths relative to `source`'s folder).
pub(crate) fn client_config(tls: &UpstreamTlsConfig, source: &Source) -> Result<Arc<ClientConfig>, String> {
    let roots = match &tls.ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in crate::pem::certificates(&source.resolve(ca.get_ref()))? {
                roots.add(certificate).map_err(|e| format!("tls.ca: {e}"))?;
            }
            Arc::new(roots)
        }
        None => {
            if SYSTEM_ROOTS.is_empty() {
                tracing::warn!("no system root certificates found: https:// servers are refused (set tls.ca)");
            }
            SYSTEM_ROOTS.clone()
        }
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = crate::pem::certificates(&source.resolve(cert.get_ref()))?;
            let key = crate::pem::private_key(&source.resolve(key.get_ref()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("tls.cert and tls.key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl UpstreamTls {
    /// TLS with `config` to the server `host`, under the upstream's `settings`.
    pub(crate) fn new(
        config: Arc<ClientConfig>,
        host: &str,
        settings: &UpstreamTlsConfig,
    ) -> Result<UpstreamTls, String> {
        let name = settings.server_name.as_ref().map_or(host, |name| name.get_ref().as_str());
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|e| format!("invalid server name {name:?}: {e}"))?;
        let mut http1 = (*config).clone();
        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamTls {
            connector: TlsConnector::from(config),
            http1_only: TlsConnector::from(Arc::new(http1)),
            server_name,
            settings: settings.clone(),
        })
    }

    /// The handshake on a connected `stream` to `target` (for errors), offering HTTP/2 unless
    /// `http1` says HTTP/1.1 alone.
    pub(crate) async fn handshake(
        &self,
        stream: TimedStream,
        target: &str,
        http1: bool,
    ) -> Result<TlsStream<TimedStream>, ConnectError> {
        let connector = if http1 { &self.http1_only } else { &self.connector };
        connector
            .connect(self.server_name.clone(), stream)
            .await
            .map_err(|e| ConnectError::Failed(target.to_owned(), e))
    }
}
