//! The schema registry (`--schema-registry-url`), as Confluent's REST API serves it: one GET of
//! `/schemas/ids/{id}` per schema id, the first time a record names it. The answer is one of
//! three, and they are kept apart because they call for opposite things: the schema (decode
//! the record), "no such schema" (error code 40403: the record is a decode error, counted and
//! dead-lettered), or no answer (the registry is down, refuses the credentials, or is not a
//! registry): the record waits, and the consumer asks again ([`super::consumer`]).

use serde::Deserialize;

use crate::config::{Config, ConfigError};
use crate::http_client::{HttpClient, HttpError, Location};

/// Confluent's error code for a schema id it does not hold.
const SCHEMA_NOT_FOUND: u32 = 40403;

/// What the registry said about an id.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    /// The schema's text (Avro JSON).
    Schema(String),
    /// The registry holds no schema of this id.
    NotFound,
}

/// Why the registry gave no answer about an id.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("status {0}: {1}")]
    Status(u16, String),
    #[error("not a schema registry answer: {0}")]
    Format(String),
}

pub struct Registry {
    client: HttpClient,
    /// The URL without user info, for logs.
    shown: String,
}

impl Registry {
    /// The registry the configuration names, if any.
    pub fn from_config(config: &Config) -> Result<Option<Self>, ConfigError> {
        let Some(url) = &config.schema_registry_url else {
            return Ok(None);
        };
        let flag = "--schema-registry-url";
        let location = Location::parse(url).map_err(|e| ConfigError::new(flag, e))?;
        let shown = format!(
            "{}://{}:{}{}",
            if location.tls { "https" } else { "http" },
            location.host,
            location.port,
            location.target
        );
        let user_info = location.user_info.clone();
        let mut client = HttpClient::new(
            location,
            flag,
            config.schema_registry_ca_file.as_deref(),
            "--schema-registry-ca-file",
        )?;
        match (
            &config.schema_registry_user,
            &config.schema_registry_password,
            user_info,
        ) {
            (Some(user), Some(password), _) => client = client.with_basic_auth(user, password),
            (_, _, Some(user_info)) => {
                let (user, password) = user_info.split_once(':').unwrap_or((&user_info, ""));
                client = client.with_basic_auth(user, password);
            }
            _ => {}
        }
        Ok(Some(Self { client, shown }))
    }

    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Asks the registry once for schema `id`.
    pub async fn schema(&self, id: u32) -> Result<Lookup, RegistryError> {
        let response = self.client.get(&format!("/schemas/ids/{id}")).await?;
        let body = String::from_utf8_lossy(&response.body);
        match response.status {
            200 => {
                #[derive(Deserialize)]
                struct Found {
                    schema: String,
                }
                let found: Found = serde_json::from_str(&body)
                    .map_err(|e| RegistryError::Format(e.to_string()))?;
                Ok(Lookup::Schema(found.schema))
            }
            404 if error_code(&body) == Some(SCHEMA_NOT_FOUND) => Ok(Lookup::NotFound),
            status => Err(RegistryError::Status(status, preview(&body))),
        }
    }
}

/// The `error_code` of a registry's error body.
fn error_code(body: &str) -> Option<u32> {
    #[derive(Deserialize)]
    struct Error {
        error_code: u32,
    }
    serde_json::from_str::<Error>(body)
        .ok()
        .map(|e| e.error_code)
}

/// The start of a body, for error messages.
fn preview(body: &str) -> String {
    body.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_registry_s_not_found_code_means_not_found() {
        assert_eq!(
            error_code(r#"{"error_code":40403,"message":"Schema 7 not found"}"#),
            Some(SCHEMA_NOT_FOUND)
        );
        // A 404 from a proxy or a wrong path is no answer about the id.
        assert_eq!(error_code("<html>Not Found</html>"), None);
        assert_eq!(error_code(r#"{"error_code":40401}"#), Some(40401));
    }
}
