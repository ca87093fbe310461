//! Authentication and authorization (protocol section 7.1). Under `--auth jwt` a client proves
//! itself with a signed token (HS256 with a shared secret, or RS256/ES256 with a PEM public
//! key). What the token allows travels in its claims: `topics`, the patterns its holder may
//! subscribe to, and `filters`, filters ANDed into every subscription a pattern covers, so that
//! whoever signs the token decides row-level access. The gateway keeps no user database: a
//! verified token becomes a [`Grant`], which sessions and streams consult on every subscribe.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{AuthMode, Config, ConfigError};
use crate::event::GatewayTopic;
use crate::index::{Filter, FilterError};
use crate::jwks::{Key, KeySet};

/// The longest a token is honoured on a connection, whatever its `exp` says: a deadline
/// further out would overflow the clock arithmetic of the connection's timers.
const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Checks tokens against the configured keys and claims.
pub struct Verifier {
    /// `--jwt-secret`, or the `--jwt-public-key` files.
    keys: Vec<Key>,
    /// `--jwt-jwks-url`: keys fetched from the identity provider.
    jwks: Option<Arc<KeySet>>,
    /// The standard claims' checks; the algorithm is set per key.
    validation: Validation,
}

/// Why a token was not accepted; the text is the 4001 close reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("invalid token claims: {0}")]
    Claims(String),
}

/// The claims the gateway reads. `exp` is required by the validation; the others are optional.
#[derive(Deserialize)]
struct Claims {
    exp: u64,
    /// Who the token names: what presence shows of its holder.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    filters: BTreeMap<String, Value>,
}

impl Verifier {
    /// `None` under `--auth none`.
    pub fn from_config(config: &Config) -> Result<Option<Self>, ConfigError> {
        let public = !config.jwt_public_key.is_empty();
        let jwks = config.jwt_jwks_url.is_some();
        match (config.auth, &config.jwt_secret) {
            (AuthMode::None, None) if !public && !jwks => return Ok(None),
            (AuthMode::None, _) => {
                return Err(ConfigError::new(
                    "--auth",
                    "--jwt-secret, --jwt-public-key and --jwt-jwks-url need --auth jwt",
                ))
            }
            (AuthMode::Jwt, None) if !public && !jwks => {
                return Err(ConfigError::new(
                    "--auth",
                    "jwt needs --jwt-secret (HS256), --jwt-public-key or --jwt-jwks-url (RS256, ES256)",
                ))
            }
            (AuthMode::Jwt, Some(_)) if public || jwks => {
                return Err(ConfigError::new(
                    "--jwt-secret",
                    "give either --jwt-secret or public keys (--jwt-public-key, --jwt-jwks-url), not both",
                ))
            }
            (AuthMode::Jwt, Some(secret)) if secret.is_empty() => {
                return Err(ConfigError::new("--jwt-secret", "must not be empty"))
            }
            _ => {}
        }
        let mut keys = Vec::new();
        if let Some(secret) = &config.jwt_secret {
            keys.push(Key {
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
                algorithm: Algorithm::HS256,
            });
        }
        for entry in &config.jwt_public_key {
            keys.push(public_key(entry)?);
        }
        let jwks = match &config.jwt_jwks_url {
            Some(url) => Some(Arc::new(KeySet::new(
                url,
                config.jwt_jwks_refresh,
                config.jwt_jwks_ca_file.as_deref(),
            )?)),
            None => None,
        };
        Ok(Some(Self::new(keys, jwks, config)))
    }

    fn new(keys: Vec<Key>, jwks: Option<Arc<KeySet>>, config: &Config) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.jwt_leeway.as_secs();
        validation.validate_nbf = true;
        // A configured issuer or audience is required, not only checked when present.
        let mut required = vec!["exp"];
        if let Some(issuer) = &config.jwt_issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.jwt_audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Self {
            keys,
            jwks,
            validation,
        }
    }

    /// The key set fetched from `--jwt-jwks-url`, for the task that keeps it fresh.
    pub fn key_set(&self) -> Option<&Arc<KeySet>> {
        self.jwks.as_ref()
    }

    /// Before [`Verifier::verify`]: a token that names a `kid` no key has makes the key set
    /// be fetched again (rate-limited: [`crate::jwks::MIN_REFETCH`]), so that a key the
    /// identity provider just published verifies the first token signed with it.
    pub async fn prepare(&self, token: &str) {
        let Some(jwks) = &self.jwks else { return };
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return;
        };
        if let Some(kid) = header.kid {
            if !self
                .keys
                .iter()
                .any(|k| k.kid.as_deref() == Some(kid.as_str()))
            {
                jwks.refetch_for(&kid).await;
            }
        }
    }

    /// Verifies the signature and the standard claims, then reads the gateway's claims.
    /// The key is the one the token's `kid` names, or, for a token without one, any key of
    /// its algorithm (tried in turn: static keys first).
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let fetched = self.jwks.as_ref().map(|set| set.keys());
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .chain(fetched.iter().flat_map(|keys| keys.iter()))
            .filter(|key| key.algorithm == header.alg)
            .filter(|key| match (&header.kid, &key.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                // A key without an id (a file given without `KID=`) is tried for any
                // token; a token without one, against every key.
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::Invalid(match &header.kid {
                Some(kid) => format!("no {:?} key with id `{kid}`", header.alg),
                None => format!("no {:?} key", header.alg),
            }));
        }
        let mut failure = None;
        let mut data = None;
        for key in candidates {
            let mut validation = self.validation.clone();
            validation.algorithms = vec![key.algorithm];
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(decoded) => {
                    data = Some(decoded);
                    break;
                }
                // Signed with this key, but expired: no other key changes that.
                Err(e) if *e.kind() == ErrorKind::ExpiredSignature => {
                    return Err(AuthError::Expired)
                }
                Err(e) => failure = Some(e),
            }
        }
        let Some(data) = data else {
            let e = failure.expect("a key was tried");
            return Err(AuthError::Invalid(e.to_string()));
        };
        let claims = data.claims;
        let filters = claims
            .filters
            .iter()
            .map(|(pattern, filters)| {
                let filter = Filter::compile(Some(filters))
                    .map_err(|e| AuthError::Claims(format!("filters for `{pattern}`: {e}")))?;
                warn_if_deletes_escape(pattern, filters);
                Ok((Pattern::new(pattern), filter))
            })
            .collect::<Result<_, AuthError>>()?;
        // The leeway that let the token in also extends its life on the connection.
        let expires_at = UNIX_EPOCH
            .checked_add(Duration::from_secs(
                claims.exp.saturating_add(self.validation.leeway),
            ))
            .unwrap_or_else(|| SystemTime::now() + MAX_LIFETIME);
        Ok(Grant {
            subject: claims.sub.as_deref().map(Box::from),
            expires_at,
            topics: claims.topics.iter().map(|t| Pattern::new(t)).collect(),
            filters,
        })
    }
}

/// One `--jwt-public-key` entry, `PATH` or `KID=PATH`: an RSA (RS256) or EC P-256 (ES256)
/// public key in PEM.
fn public_key(entry: &str) -> Result<Key, ConfigError> {
    // A path may itself hold `=`: an id is taken only where it leaves a file that exists.
    let (kid, path) = match entry.split_once('=') {
        Some((kid, path)) if !kid.is_empty() && !std::path::Path::new(entry).exists() => {
            (Some(kid.to_owned()), path)
        }
        _ => (None, entry),
    };
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::new("--jwt-public-key", format!("{path}: {e}")))?;
    let (key, algorithm) = match DecodingKey::from_rsa_pem(&pem) {
        Ok(key) => (key, Algorithm::RS256),
        Err(_) => match DecodingKey::from_ec_pem(&pem) {
            Ok(key) => (key, Algorithm::ES256),
            Err(e) => {
                return Err(ConfigError::new(
                    "--jwt-public-key",
                    format!("{path}: not an RSA or EC public key in PEM: {e}"),
                ))
            }
        },
    };
    Ok(Key {
        kid,
        key,
        algorithm,
    })
}

/// The token of an HTTP request, first found wins: `Authorization: Bearer <token>`, then the
/// `token` query parameter (which proxies may log: the header is the better way).
pub fn request_token<B>(request: &hyper::Request<B>) -> Option<String> {
    let header = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    header.or_else(|| {
        form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .find(|(key, _)| key == "token")
            .map(|(_, token)| token.into_owned())
    })
}

/// What a verified token allows, until it expires.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The token's `sub`. Boxed slices and strings: every connection holds a grant, inside
    /// the session state's allocation class (ws/session.rs).
    subject: Option<Box<str>>,
    expires_at: SystemTime,
    topics: Box<[Pattern]>,
    filters: Box<[(Pattern, Filter)]>,
}

impl Grant {
    /// The token's `sub`, shown in presence.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// Time left before the token expires (zero once it has).
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(MAX_LIFETIME)
    }

    pub fn allows(&self, topic: &str) -> bool {
        self.topics.iter().any(|p| p.covers(topic))
    }

    /// The subscription's own filters ANDed with the token's filters for every pattern that
    /// covers the topic.
    pub fn confine(&self, topic: &str, filters: Option<&Value>) -> Result<Filter, FilterError> {
        Ok(self.confine_compiled(topic, Filter::compile(filters)?))
    }

    /// `own` (a client's compiled filter, without claims) ANDed with the claim filters that
    /// confine `topic`.
    pub fn confine_compiled(&self, topic: &str, own: Filter) -> Filter {
        self.filters
            .iter()
            .filter(|(pattern, _)| pattern.confines(topic))
            .fold(own, |filter, (_, claim)| filter.confined_by(claim))
    }
}

/// A topic pattern of the `topics` claim: `cdc.order` (that topic), `cdc.order.*` (any row
/// of order), `cdc.*` (every topic).
#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn new(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('.') => Pattern::Prefix(prefix.to_owned()),
            _ => Pattern::Exact(text.to_owned()),
        }
    }

    fn covers(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(exact) => exact == topic,
            Pattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }

    /// Whether a claim filter keyed by this pattern applies to `topic`: as [`Pattern::covers`],
    /// and a filter keyed by an entity topic (`cdc.order`) also confines that entity's row
    /// topics (`cdc.order.<id>`), or a row topic would be a way around it.
    fn confines(&self, topic: &str) -> bool {
        self.covers(topic)
            || matches!(self, Pattern::Exact(entity)
                if matches!(GatewayTopic::parse(entity), Ok(GatewayTopic::Entity { .. }))
                    && topic.strip_prefix(entity.as_str()).is_some_and(|rest| rest.starts_with('.')))
    }
}

/// Whether a claim filter reads `data.` paths and never `row.`: a delete has `data: null`, so
/// such a filter never matches one and a confined table keeps deleted rows.
pub fn reads_data_only(filters: &Value) -> bool {
    let Value::Object(fields) = filters else {
        return false;
    };
    let keys = || fields.keys().filter(|k| !k.starts_with('$'));
    keys().any(|k| k.starts_with("data.")) && !keys().any(|k| k.starts_with("row."))
}

/// Logs once per process the first claim filter that hides deletes from its holder.
fn warn_if_deletes_escape(pattern: &str, filters: &Value) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if reads_data_only(filters) && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            pattern,
            "a token's claim filter reads `data.` fields only: deletes (data null) never match \
             it, so its holder's tables keep deleted rows. Issue `row.` filters instead \
             (docs/security.md); this is logged once"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn verifier(secret: &str) -> Verifier {
        use clap::Parser as _;
        let args = [
            "cdc-gateway",
            "--auth",
            "jwt",
            "--jwt-secret",
            secret,
            "--jwt-leeway",
            "0s",
        ];
        let config = crate::config::Cli::parse_from(args).config;
        Verifier::from_config(&config).unwrap().unwrap()
    }

    fn token(secret: &str, claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn in_a_minute() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60
    }

    #[test]
    fn patterns_grant_what_they_name() {
        let grant = verifier("s")
            .verify(&token(
                "s",
                json!({"exp": in_a_minute(), "topics": ["cdc.order", "cdc.customer.*"]}),
            ))
            .unwrap();
        assert!(grant.allows("cdc.order"));
        assert!(!grant.allows("cdc.order.1"), "exact means exact");
        assert!(grant.allows("cdc.customer.7"));
        assert!(!grant.allows("cdc.customer"), "rows only");
        assert!(!grant.allows("cdc.invoice"));
        let all = verifier("s")
            .verify(&token(
                "s",
                json!({"exp": in_a_minute(), "topics": ["cdc.*"]}),
            ))
            .unwrap();
        assert!(all.allows("cdc.invoice.9") && all.allows("cdc.invoice"));
        assert!(grant.remaining() > Duration::from_secs(50));
    }

    #[test]
    fn claim_filters_on_data_only_are_recognised() {
        assert!(reads_data_only(&json!({"data.tenant": "acme"})));
        assert!(!reads_data_only(&json!({"row.tenant": "acme"})));
        assert!(!reads_data_only(
            &json!({"data.tenant": "acme", "row.tenant": "acme"})
        ));
        assert!(!reads_data_only(&json!({"operation": {"ne": "truncate"}})));
    }

    #[test]
    fn claim_filters_are_anded_into_covered_subscriptions() {
        let grant = verifier("s")
            .verify(&token(
                "s",
                json!({"exp": in_a_minute(), "topics": ["cdc.*"],
                       "filters": {"cdc.order": {"data.tenant": "acme"}, "cdc.*": {"operation": {"ne": "truncate"}}}}),
            ))
            .unwrap();
        let own = json!({"data.status": "paid"});
        let confined = grant.confine("cdc.order", Some(&own)).unwrap();
        let expected = Filter::compile(Some(&own))
            .unwrap()
            .confined_by(&Filter::compile(Some(&json!({"operation": {"ne": "truncate"}}))).unwrap())
            .confined_by(&Filter::compile(Some(&json!({"data.tenant": "acme"}))).unwrap());
        assert_eq!(confined.len(), expected.len());
        assert_eq!(grant.confine("cdc.customer", None).unwrap().len(), 1);
        assert_eq!(
            grant.confine("cdc.order.7", None).unwrap().len(),
            2,
            "an entity's claim filter confines its row topics too"
        );
        assert_eq!(grant.confine("cdc.orders.7", None).unwrap().len(), 1);
    }

    #[test]
    fn bad_tokens_say_why() {
        let v = verifier("s");
        assert!(matches!(
            v.verify("not.a.token"),
            Err(AuthError::Invalid(_))
        ));
        let wrong_key = token("other", json!({"exp": in_a_minute()}));
        assert!(matches!(v.verify(&wrong_key), Err(AuthError::Invalid(_))));
        let expired = token("s", json!({"exp": 1_000_000_000}));
        assert_eq!(v.verify(&expired).unwrap_err(), AuthError::Expired);
        let no_exp = token("s", json!({"topics": ["cdc.*"]}));
        assert!(matches!(v.verify(&no_exp), Err(AuthError::Invalid(_))));
        let bad_filter = token(
            "s",
            json!({"exp": in_a_minute(), "filters": {"cdc.*": {"data.x": {"near": 1}}}}),
        );
        assert!(matches!(v.verify(&bad_filter), Err(AuthError::Claims(_))));
    }

    #[test]
    fn a_configured_issuer_and_audience_are_required() {
        use clap::Parser as _;
        let args = [
            "cdc-gateway",
            "--auth",
            "jwt",
            "--jwt-secret",
            "s",
            "--jwt-issuer",
            "https://issuer.example",
            "--jwt-audience",
            "gateway",
        ];
        let config = crate::config::Cli::parse_from(args).config;
        let v = Verifier::from_config(&config).unwrap().unwrap();
        let exp = in_a_minute();
        let both = json!({"exp": exp, "iss": "https://issuer.example", "aud": "gateway"});
        assert!(v.verify(&token("s", both)).is_ok());
        for missing in [
            json!({"exp": exp, "aud": "gateway"}),
            json!({"exp": exp, "iss": "https://issuer.example"}),
        ] {
            assert!(
                matches!(
                    v.verify(&token("s", missing.clone())),
                    Err(AuthError::Invalid(_))
                ),
                "{missing}"
            );
        }
    }

    #[test]
    fn an_exp_beyond_any_clock_is_capped_not_a_panic() {
        let v = verifier("s");
        let grant = v
            .verify(&token("s", json!({"exp": u64::MAX, "topics": ["cdc.*"]})))
            .unwrap();
        let remaining = grant.remaining();
        assert!(remaining <= MAX_LIFETIME && remaining > MAX_LIFETIME - Duration::from_secs(60));
        let _deadline = tokio::time::Instant::now() + grant.remaining();
    }
}
