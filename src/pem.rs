//! PEM files of certificates and private keys, read for TLS listeners (`tls`) and for upstream
//! servers reached over TLS (`upstream`), with errors that say which file and why.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// The certificates of a PEM file (a chain, or roots); an error when it holds none.
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot load certificate {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("no certificate in {} (expected PEM)", path.display()));
    }
    Ok(certificates)
}

/// The private key of a PEM file.
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("cannot load private key {}: {e}", path.display()))
}
