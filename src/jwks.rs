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
//! The fetch is one GET of [`crate::http_client`] (TLS with Mozilla's roots plus
//! `--jwt-jwks-ca-file`), bounded in time and size.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::ConfigError;
use crate::http_client::{HttpClient, HttpError, Location};
use bytes::Bytes;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The least time between two fetches that tokens with unknown key ids cause.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);
/// Bound on the keys taken from a key set.
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
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("status {0}")]
    Status(u16),
    #[error("not a JSON Web Key Set: {0}")]
    Format(String),
}

/// The fetched key set, and what fetches it.
pub struct KeySet {
    url: String,
    client: HttpClient,
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
        if location.user_info.is_some() {
            return Err(ConfigError::new("--jwt-jwks-url", "needs no user info"));
        }
        if !location.tls && !location.is_loopback() {
            return Err(ConfigError::new(
                "--jwt-jwks-url",
                "http:// only on loopback: keys fetched in clear text can be replaced on the way",
            ));
        }
        let client = HttpClient::new(location, "--jwt-jwks-url", ca_file, "--jwt-jwks-ca-file")?;
        Ok(Self {
            url: url.to_owned(),
            client,
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
        let result = self.get().await.and_then(|body| parse(&body));
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
        let response = self.client.get("").await?;
        if !(200..300).contains(&response.status) {
            return Err(JwksError::Status(response.status));
        }
        Ok(response.body)
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
    fn clear_text_is_for_loopback_only() {
        assert!(KeySet::new("https://user@idp/", Duration::from_secs(60), None).is_err());
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
