//! The one HTTP client of the gateway, for the few documents it fetches: the identity
//! provider's key set (`--jwt-jwks-url`) and the schema registry's schemas
//! (`--schema-registry-url`). hyper's own HTTP/1.1 over TCP, with TLS (rustls, Mozilla's
//! roots plus a CA file) for https://: a new connection per GET, bounded in time and size.
//! Both callers fetch rarely (a key set every few minutes, a schema once per id), so a
//! connection pool would hold sockets open for nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

use crate::config::ConfigError;

/// Bound on one GET, connection to last byte.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a response body.
const MAX_BYTES: usize = 1 << 20;

/// Why a GET got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot reach {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// An answer: its status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// Where a URL points.
#[derive(Debug, Clone)]
pub struct Location {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, `/` at least.
    pub target: String,
    /// `user:password` written before the host, if any.
    pub user_info: Option<String>,
}

impl Location {
    pub fn parse(url: &str) -> Result<Self, String> {
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
        let (user_info, authority) = match authority.rsplit_once('@') {
            Some((user_info, host)) => (Some(user_info.to_owned()), host),
            None => (None, authority),
        };
        if authority.is_empty() {
            return Err("needs a host".into());
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
            user_info,
        })
    }

    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// GETs below one base URL.
pub struct HttpClient {
    location: Location,
    tls: tokio_rustls::TlsConnector,
    /// The `Authorization` header sent with every request.
    authorization: Option<String>,
}

impl HttpClient {
    /// `flag` and `ca_flag` name the settings in errors. The CA file's certificates are
    /// trusted besides Mozilla's roots.
    pub fn new(
        location: Location,
        flag: &'static str,
        ca_file: Option<&Path>,
        ca_flag: &'static str,
    ) -> Result<Self, ConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            for certificate in crate::tls::certificates(path, ca_flag)? {
                roots
                    .add(certificate)
                    .map_err(|e| ConfigError::new(ca_flag, format!("{}: {e}", path.display())))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new(flag, e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            location,
            tls: tokio_rustls::TlsConnector::from(Arc::new(client)),
            authorization: None,
        })
    }

    /// HTTP basic authentication with every request.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Self {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.authorization = Some(format!("Basic {token}"));
        self
    }

    /// GETs the base URL's path followed by `suffix`: any status, bounded in time and size.
    pub async fn get(&self, suffix: &str) -> Result<Response, HttpError> {
        tokio::time::timeout(TIMEOUT, self.fetch(suffix))
            .await
            .unwrap_or(Err(HttpError::Timeout(TIMEOUT)))
    }

    async fn fetch(&self, suffix: &str) -> Result<Response, HttpError> {
        let at = &self.location;
        let stream = tokio::net::TcpStream::connect((at.host.as_str(), at.port))
            .await
            .map_err(|e| HttpError::Connect(format!("{}:{}", at.host, at.port), e))?;
        if !at.tls {
            return self.exchange(TokioIo::new(stream), suffix).await;
        }
        let name = ServerName::try_from(at.host.clone())
            .map_err(|e| HttpError::Http(format!("`{}`: {e}", at.host)))?;
        let stream = self
            .tls
            .connect(name, stream)
            .await
            .map_err(|e| HttpError::Tls(at.host.clone(), e))?;
        self.exchange(TokioIo::new(stream), suffix).await
    }

    async fn exchange<T>(&self, io: T, suffix: &str) -> Result<Response, HttpError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let http = |e: hyper::Error| HttpError::Http(e.to_string());
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
        let target = if suffix.is_empty() {
            at.target.clone()
        } else {
            format!("{}{suffix}", at.target.trim_end_matches('/'))
        };
        let mut request = hyper::Request::get(target.as_str())
            .header(hyper::header::HOST, host)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "cdc-gateway");
        if let Some(authorization) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| HttpError::Http(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| HttpError::Http(format!("body: {e}")))?
            .to_bytes();
        connection.abort();
        Ok(Response { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read() {
        let at = Location::parse("https://idp.example/realms/x/certs?v=1").unwrap();
        assert_eq!(
            (at.tls, at.host.as_str(), at.port),
            (true, "idp.example", 443)
        );
        assert_eq!(at.target, "/realms/x/certs?v=1");
        let at = Location::parse("http://127.0.0.1:8089").unwrap();
        assert_eq!((at.port, at.target.as_str()), (8089, "/"));
        assert!(at.is_loopback() && at.user_info.is_none());
        let at = Location::parse("https://key:se:cret@registry.example:8081").unwrap();
        assert_eq!(at.user_info.as_deref(), Some("key:se:cret"));
        assert_eq!((at.host.as_str(), at.port), ("registry.example", 8081));
        assert!(Location::parse("ftp://x").is_err());
        assert!(Location::parse("https://user@/").is_err());
    }
}
