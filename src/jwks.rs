//! Keys that rotate: a JSON Web Key Set fetched from the identity provider
//! (`--jwt-jwks-url`), as Auth0, Keycloak, Okta and Cognito publish them. An identity
//! provider rotates its signing key by publishing the new key beside the old one, then
//! signing with it; tokens name their key in the `kid` header. The gateway fetches the set
//! at start and every `--jwt-jwks-refresh`, and again as soon as a token names a `kid` it
//! does not hold (at most once every [`MIN_REFETCH`], whoever asks: a flood of tokens with
//! made-up ids costs one request to the provider every few seconds). What it fetched stays in
//! use while the provider is unreachable; a fetch that fails is logged and counted, and
//! retried at the next occasion.
//!
//! The client is hyper's own HTTP/1.1 over TCP, with TLS (rustls, Mozilla's roots plus
//! `--jwt-jwks-ca-file`) for https://: one GET, bounded in time and size.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls_pki_types::ServerName;

use crate::config::ConfigError;

/// The least time between two fetches that tokens with unknown key ids cause.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);
/// Bound on one fetch, connection to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a key set's size, and on the keys taken from it.
const MAX_BYTES: usize = 1 << 20;
const MAX_KEYS: usize = 64;

/// A key a token may be verified with.
#[derive(Clone)]
pub struct Key {
    /// The `kid` tokens name it by; `None`: tried for any token of its algorithm.
    pub kid: Option<String>,
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

/// Why a key set could not be fetched or read.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot reach {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("status {0}")]
    Status(u16),
    #[error("not a JSON Web Key Set: {0}")]
    Format(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Where the key set is, read from `--jwt-jwks-url`.
#[derive(Debug, Clone)]
struct Location {
    tls: bool,
    host: String,
    port: u16,
    /// Path and query, `/` at least.
    target: String,
}

impl Location {
    fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err("must start with https:// (or http://)".into());
        };
        let (authority, target) = match rest.find('/') {
            Some(at) => (&rest[..at], rest[at..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err("needs a host (and no user info)".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => (
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port.parse::<u16>()
                    .map_err(|_| format!("`{port}` is not a port"))?,
            ),
            _ => (authority.to_owned(), if tls { 443 } else { 80 }),
        };
        Ok(Self {
            tls,
            host,
            port,
            target,
        })
    }
}

/// The fetched key set, and what fetches it.
pub struct KeySet {
    url: String,
    location: Location,
    tls: tokio_rustls::TlsConnector,
    keys: RwLock<Arc<Vec<Key>>>,
    /// When the last fetch ended; held across a fetch, so that one runs at a time.
    fetched: tokio::sync::Mutex<Option<Instant>>,
    refresh: Duration,
    metrics: std::sync::OnceLock<(prometheus::IntCounterVec, prometheus::IntGauge)>,
}

impl KeySet {
    /// Checks the URL and CA file; nothing is fetched yet ([`KeySet::run`]).
    pub fn new(
        url: &str,
        refresh: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, ConfigError> {
        let location = Location::parse(url).map_err(|e| ConfigError::new("--jwt-jwks-url", e))?;
        if !location.tls {
            let loopback = location.host == "localhost"
                || location
                    .host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(ConfigError::new(
                    "--jwt-jwks-url",
                    "http:// only on loopback: keys fetched in clear text can be replaced on the way",
                ));
            }
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            for certificate in crate::tls::certificates(path, "--jwt-jwks-ca-file")? {
                roots.add(certificate).map_err(|e| {
                    ConfigError::new("--jwt-jwks-ca-file", format!("{}: {e}", path.display()))
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new("--jwt-jwks-url", e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            url: url.to_owned(),
            location,
            tls: tokio_rustls::TlsConnector::from(Arc::new(client)),
            keys: RwLock::new(Arc::new(Vec::new())),
            fetched: tokio::sync::Mutex::new(None),
            refresh,
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Counts fetches by result and the keys held.
    pub fn with_metrics(&self, fetches: prometheus::IntCounterVec, keys: prometheus::IntGauge) {
        let _ = self.metrics.set((fetches, keys));
    }

    /// The keys held now.
    pub fn keys(&self) -> Arc<Vec<Key>> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn holds(&self, kid: &str) -> bool {
        self.keys().iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Fetches the set now, then every `--jwt-jwks-refresh`, until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.fetch_now(Duration::ZERO).await;
            tokio::time::sleep(self.refresh).await;
        }
    }

    /// A token names `kid`, which the set lacks: fetches again unless a fetch ended less
    /// than [`MIN_REFETCH`] ago (a fetch under way is waited for, not repeated).
    pub async fn refetch_for(&self, kid: &str) {
        if self.holds(kid) {
            return;
        }
        self.fetch_now(MIN_REFETCH).await;
    }

    /// Fetches unless the last fetch ended within `fresh`.
    async fn fetch_now(&self, fresh: Duration) {
        let mut fetched = self.fetched.lock().await;
        if fresh > Duration::ZERO && fetched.is_some_and(|at| at.elapsed() < fresh) {
            return;
        }
        let result = tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .unwrap_or(Err(JwksError::Timeout(FETCH_TIMEOUT)))
            .and_then(|body| parse(&body));
        *fetched = Some(Instant::now());
        let metrics = self.metrics.get();
        match result {
            Ok(keys) => {
                let changed = {
                    let held = self.keys();
                    let ids = |keys: &[Key]| -> Vec<Option<String>> {
                        keys.iter().map(|k| k.kid.clone()).collect()
                    };
                    ids(&held) != ids(&keys)
                };
                if changed {
                    tracing::info!(url = self.url, keys = keys.len(), kids = ?keys.iter().map(|k| k.kid.clone().unwrap_or_default()).collect::<Vec<_>>(), "JSON Web Key Set fetched");
                }
                if let Some((fetches, held)) = metrics {
                    fetches.with_label_values(&["ok"]).inc();
                    held.set(keys.len() as i64);
                }
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
            Err(e) => {
                if let Some((fetches, _)) = metrics {
                    fetches.with_label_values(&["error"]).inc();
                }
                tracing::warn!(
                    url = self.url,
                    "cannot fetch the JSON Web Key Set (the keys fetched before stay in use): {e}"
                );
            }
        }
    }

    async fn get(&self) -> Result<Bytes, JwksError> {
        let at = &self.location;
        let stream = tokio::net::TcpStream::connect((at.host.as_str(), at.port))
            .await
            .map_err(|e| JwksError::Connect(format!("{}:{}", at.host, at.port), e))?;
        if !at.tls {
            return self.exchange(TokioIo::new(stream)).await;
        }
        let name = ServerName::try_from(at.host.clone())
            .map_err(|e| JwksError::Http(format!("`{}`: {e}", at.host)))?;
        let stream = self
            .tls
            .connect(name, stream)
            .await
            .map_err(|e| JwksError::Tls(at.host.clone(), e))?;
        self.exchange(TokioIo::new(stream)).await
    }

    async fn exchange<T>(&self, io: T) -> Result<Bytes, JwksError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let http = |e: hyper::Error| JwksError::Http(e.to_string());
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http)?;
        let connection = tokio::spawn(connection);
        let at = &self.location;
        let host = if (at.tls && at.port == 443) || (!at.tls && at.port == 80) {
            at.host.clone()
        } else {
            format!("{}:{}", at.host, at.port)
        };
        let request = hyper::Request::get(at.target.as_str())
            .header(hyper::header::HOST, host)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "cdc-gateway")
            .body(Empty::<Bytes>::new())
            .map_err(|e| JwksError::Http(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(http)?;
        if !response.status().is_success() {
            connection.abort();
            return Err(JwksError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| JwksError::Http(format!("body: {e}")))?
            .to_bytes();
        connection.abort();
        Ok(body)
    }
}

/// The signing keys of a key set: RSA (RS256, or the `alg` it names among RS*/PS*) and EC
/// P-256 (ES256) keys whose `use` is not `enc`; others (symmetric keys, curves the gateway
/// does not verify) are left out. At most [`MAX_KEYS`].
pub fn parse(body: &[u8]) -> Result<Vec<Key>, JwksError> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| JwksError::Format(e.to_string()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS384)) => Algorithm::RS384,
            (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS512)) => Algorithm::RS512,
            (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS256)) => Algorithm::PS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            key,
            algorithm,
        });
        if keys.len() == MAX_KEYS {
            break;
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_and_clear_text_is_for_loopback_only() {
        let at = Location::parse("https://idp.example/realms/x/certs?v=1").unwrap();
        assert_eq!(
            (at.tls, at.host.as_str(), at.port),
            (true, "idp.example", 443)
        );
        assert_eq!(at.target, "/realms/x/certs?v=1");
        let at = Location::parse("http://127.0.0.1:8089").unwrap();
        assert_eq!((at.port, at.target.as_str()), (8089, "/"));
        assert!(Location::parse("ftp://x").is_err());
        assert!(Location::parse("https://user@idp/").is_err());
        assert!(KeySet::new("http://127.0.0.1:1/jwks", Duration::from_secs(60), None).is_ok());
        let remote = KeySet::new("http://idp.example/jwks", Duration::from_secs(60), None);
        assert!(remote.err().unwrap().to_string().contains("loopback"));
    }

    #[test]
    fn signing_keys_are_taken_others_left_out() {
        let body = include_bytes!("../tests/fixtures/jwt/jwks.json");
        let keys = parse(body).unwrap();
        let ids: Vec<_> = keys
            .iter()
            .map(|k| (k.kid.clone().unwrap(), k.algorithm))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("rsa-1".to_owned(), Algorithm::RS256),
                ("ec-1".to_owned(), Algorithm::ES256)
            ],
            "the `enc` key and the symmetric key are not signing keys"
        );
        assert!(matches!(parse(b"{}"), Err(JwksError::Format(_))));
    }
}
