//! Config-file helpers both daemons use: reading a TOML file into a raw
//! shape, the one config error type, durations and broker URLs. What a
//! key means is each daemon's business; this module only reads and names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mqtt::Tls;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {error}")]
    Read { path: PathBuf, error: String },
    #[error("config {path}: {error}")]
    Parse { path: PathBuf, error: String },
    #[error("config key {key:?} is required")]
    Missing { key: &'static str },
    #[error("config key {key:?}: {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// Reads a TOML config file into `T` (unknown keys are errors if `T` says
/// `deny_unknown_fields`).
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_owned(),
        error: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        error: e.to_string(),
    })
}

/// A `ConfigError::Invalid` for `key`.
pub fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// A duration setting such as `"5s"`, or `default`.
pub fn duration(
    key: &'static str,
    v: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s).map_err(|e| invalid(key, format!("{s:?}: {e}"))),
    }
}

/// `mqtt://host[:port]` (default 1883) or `mqtts://host[:port]` (TLS,
/// default 8883) → (host, port, tls).
pub fn parse_mqtt_url(key: &'static str, url: &str) -> Result<(String, u16, bool), ConfigError> {
    let (rest, tls, default_port) = if let Some(r) = url.strip_prefix("mqtt://") {
        (r, false, 1883)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (r, true, 8883)
    } else {
        return Err(invalid(
            key,
            format!("{url:?} must start with mqtt:// or mqtts://"),
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|e| invalid(key, format!("{url:?}: port {e}")))?,
        ),
        None => (rest, default_port),
    };
    if host.is_empty() {
        return Err(invalid(key, format!("{url:?} has no host")));
    }
    Ok((host.to_owned(), port, tls))
}

/// The TLS settings for an `mqtts://` URL; files given for a plain
/// `mqtt://` URL are an error (they would silently not be used).
pub fn tls_settings(
    key: &'static str,
    tls: bool,
    ca: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
) -> Result<Option<Tls>, ConfigError> {
    let given = ca.is_some() || client_cert.is_some() || client_key.is_some();
    if !tls {
        if given {
            return Err(invalid(
                key,
                "TLS files are set but the URL is mqtt://, not mqtts://",
            ));
        }
        return Ok(None);
    }
    Ok(Some(Tls {
        ca,
        client_cert,
        client_key,
    }))
}
