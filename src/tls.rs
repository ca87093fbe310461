//! TLS on the gateway's own port (`--tls-cert`, `--tls-key`): `wss://` and `https://` for
//! deployments without a terminating proxy. The acceptor is built once at startup, so a bad
//! certificate or key is a configuration error that names its flag (exit status 2); the
//! handshake of each connection is bounded like the request head that follows it.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigError};

/// The acceptor for `--tls-cert` and `--tls-key`; `None` without them.
pub fn acceptor(config: &Config) -> Result<Option<TlsAcceptor>, ConfigError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let chain = certificates(cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ConfigError::new("--tls-key", format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| ConfigError::new("--tls-key", format!("does not fit --tls-cert: {e}")))?;
    let mut server = server;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// The certificates of a PEM file, at least one; errors name `flag`.
pub fn certificates(
    path: &Path,
    flag: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad =
        |e: &dyn std::fmt::Display| ConfigError::new(flag, format!("{}: {e}", path.display()));
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if chain.is_empty() {
        return Err(bad(&"no certificate in PEM"));
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn config(cert: &str, key: &str) -> Config {
        let fixture =
            |name: &str| format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"));
        let args = [
            "cdc-gateway",
            "--tls-cert",
            &fixture(cert),
            "--tls-key",
            &fixture(key),
        ];
        crate::config::Cli::parse_from(args).config
    }

    #[test]
    fn a_certificate_and_its_key_make_an_acceptor_anything_else_names_the_flag() {
        assert!(acceptor(&config("cert.pem", "key.pem")).unwrap().is_some());
        let missing = acceptor(&config("nope.pem", "key.pem")).err().unwrap();
        assert!(missing.to_string().contains("--tls-cert"), "{missing}");
        let swapped = acceptor(&config("key.pem", "cert.pem")).err().unwrap();
        assert!(swapped.to_string().contains("--tls-"), "{swapped}");
    }
}
