//! TEMPORARY: a minimal reading of `config.json` until `crate::config::ClusterConfig` (the
//! runtime engineer's validated config) is merged; then this file is deleted and the
//! imports in `client/mod.rs`, `cli/` switch to `crate::config`. Mirrors its API subset.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Address {
    pub ip: String,
    pub port: u16,
    pub internal_port: u16,
}

impl Address {
    pub fn client_endpoint(&self) -> String {
        format!("tcp://{}:{}", self.ip, self.port)
    }

    pub fn internal_endpoint(&self) -> String {
        format!("tcp://{}:{}", self.ip, self.internal_port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct ClusterConfig {
    pub addresses: Vec<Address>,
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            path: shown.clone(),
            source,
        })?;
        let config: ClusterConfig =
            serde_json::from_str(&text).map_err(|error| ConfigError::Invalid {
                path: shown.clone(),
                reason: error.to_string(),
            })?;
        if config.addresses.is_empty() {
            return Err(ConfigError::Invalid {
                path: shown,
                reason: "the address list is empty".to_string(),
            });
        }
        Ok(config)
    }
}
