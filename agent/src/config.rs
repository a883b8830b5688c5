//! Configuration: a TOML file (every key optional) overridden by the
//! environment and flags, validated into a [`Config`]. Unknown keys and bad
//! values are errors that name the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_runtime::config::{duration, invalid, parse_mqtt_url, read_toml, tls_settings};
use baton_shared::{AgentId, ClusterId, PublicKey};

pub use baton_runtime::config::ConfigError;
use serde::Deserialize;

/// The file's shape; every field optional so flags can fill the rest.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub id: Option<String>,
    pub cluster: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub gateway: Option<String>,
    pub gateway_key: Option<String>,
    pub broker_password: Option<String>,
    /// TLS (`mqtts://`): the broker's CA file (none: the system's roots).
    pub gateway_ca: Option<PathBuf>,
    pub gateway_client_cert: Option<PathBuf>,
    pub gateway_client_key: Option<PathBuf>,
    pub resend_timeout: Option<String>,
    pub checkpoint_interval: Option<String>,
    pub window: Option<usize>,
    pub budget: Option<String>,
    pub free_floor: Option<String>,
    pub retention: Option<String>,
    pub heartbeat: Option<String>,
    pub heartbeat_summary: Option<String>,
    /// Overrides the class hint derived from the device model.
    pub class: Option<String>,
    /// Keys whose commands this agent obeys (hex): the top's, or any
    /// ancestor's (PROTOCOL §9).
    pub issuer_keys: Option<Vec<String>>,
    /// What this device can do, for commands' `select.capabilities`.
    pub capabilities: Option<Vec<String>>,
    /// Executables serving verbs the agent has no built-in handler for:
    /// verb → path (`[handlers] act = "/usr/lib/baton/act"`).
    pub handlers: Option<std::collections::BTreeMap<String, PathBuf>>,
}

impl RawConfig {
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        read_toml(path)
    }

    /// Values in `over` win.
    pub fn merge(self, over: RawConfig) -> RawConfig {
        RawConfig {
            id: over.id.or(self.id),
            cluster: over.cluster.or(self.cluster),
            data_dir: over.data_dir.or(self.data_dir),
            key: over.key.or(self.key),
            socket: over.socket.or(self.socket),
            gateway: over.gateway.or(self.gateway),
            gateway_key: over.gateway_key.or(self.gateway_key),
            broker_password: over.broker_password.or(self.broker_password),
            gateway_ca: over.gateway_ca.or(self.gateway_ca),
            gateway_client_cert: over.gateway_client_cert.or(self.gateway_client_cert),
            gateway_client_key: over.gateway_client_key.or(self.gateway_client_key),
            resend_timeout: over.resend_timeout.or(self.resend_timeout),
            checkpoint_interval: over.checkpoint_interval.or(self.checkpoint_interval),
            window: over.window.or(self.window),
            budget: over.budget.or(self.budget),
            free_floor: over.free_floor.or(self.free_floor),
            retention: over.retention.or(self.retention),
            heartbeat: over.heartbeat.or(self.heartbeat),
            heartbeat_summary: over.heartbeat_summary.or(self.heartbeat_summary),
            class: over.class.or(self.class),
            issuer_keys: over.issuer_keys.or(self.issuer_keys),
            capabilities: over.capabilities.or(self.capabilities),
            handlers: over.handlers.or(self.handlers),
        }
    }
}

/// Where the gateway's broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
    /// `Some` for `mqtts://`.
    pub tls: Option<baton_runtime::mqtt::Tls>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: AgentId,
    pub cluster: ClusterId,
    pub data_dir: PathBuf,
    pub key: PathBuf,
    pub socket: PathBuf,
    /// `None`: no uplink configured; the ledger still takes appends.
    pub gateway: Option<Uplink>,
    /// The gateway key to pin; without it the first gateway that answers
    /// is pinned (and kept, durably).
    pub gateway_key: Option<PublicKey>,
    pub resend_timeout: Duration,
    pub checkpoint_interval: Duration,
    pub window: usize,
    /// Most bytes of stored entries (PROTOCOL §7 rule 2).
    pub budget: u64,
    /// Free space to keep on the ledger's filesystem.
    pub free_floor: u64,
    /// Receipted entries older than this are deleted.
    pub retention: Duration,
    /// Heartbeats (QoS 0) every this often.
    pub heartbeat: Duration,
    /// A `heartbeat_summary` entry in the ledger every this often.
    pub heartbeat_summary: Duration,
    /// The class hint (`CLASS_…`); `None`: derived from the device model.
    pub class: Option<String>,
    /// Keys whose commands are obeyed (PROTOCOL §9). Empty: only commands
    /// the configured `gateway_key` issued itself; a key pinned on first
    /// contact never authorizes a command.
    pub issuer_keys: Vec<PublicKey>,
    pub capabilities: Vec<String>,
    /// Executables for `orient`, `decide` and `act` (see `coord`).
    pub handlers: std::collections::BTreeMap<baton_shared::command::Verb, PathBuf>,
}

fn size(key: &'static str, v: Option<&str>, default: u64) -> Result<u64, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => s
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| invalid(key, format!("{s:?}: {e} (e.g. \"512MiB\", \"2GiB\")"))),
    }
}

/// At most this many capabilities (they ride in every heartbeat).
pub const MAX_CAPABILITIES: usize = 64;

/// The least budget: two of the largest entries (64 KiB of content each)
/// with their overhead. Below it an offline agent could refuse an append
/// while holding almost nothing.
pub const MIN_BUDGET: u64 = 2 * (64 * 1024 + 1024);

fn budget(v: Option<&str>) -> Result<u64, ConfigError> {
    let b = size("budget", v, 1024 * 1024 * 1024)?;
    if b < MIN_BUDGET {
        return Err(invalid(
            "budget",
            format!(
                "{} is below the least budget, {} (two of the largest entries)",
                bytesize::ByteSize(b),
                bytesize::ByteSize(MIN_BUDGET)
            ),
        ));
    }
    Ok(b)
}

impl Config {
    pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let id = raw.id.ok_or(ConfigError::Missing { key: "id" })?;
        let id = AgentId::new(id).map_err(|e| invalid("id", e.to_string()))?;
        let cluster = raw.cluster.ok_or(ConfigError::Missing { key: "cluster" })?;
        let cluster = ClusterId::new(cluster).map_err(|e| invalid("cluster", e.to_string()))?;
        let data_dir = raw
            .data_dir
            .ok_or(ConfigError::Missing { key: "data_dir" })?;
        let gateway = match raw.gateway {
            Some(url) => {
                let (host, port, tls) = parse_mqtt_url("gateway", &url)?;
                Some(Uplink {
                    host,
                    port,
                    password: raw.broker_password.clone(),
                    tls: tls_settings(
                        "gateway",
                        tls,
                        raw.gateway_ca,
                        raw.gateway_client_cert,
                        raw.gateway_client_key,
                    )?,
                })
            }
            None if raw.gateway_ca.is_some()
                || raw.gateway_client_cert.is_some()
                || raw.gateway_client_key.is_some() =>
            {
                return Err(invalid("gateway_ca", "TLS files are set but no gateway is"));
            }
            None => None,
        };
        let gateway_key = raw
            .gateway_key
            .map(|k| {
                PublicKey::trusted_hex(k.trim()).map_err(|e| invalid("gateway_key", e.to_string()))
            })
            .transpose()?;
        let heartbeat = duration(
            "heartbeat",
            raw.heartbeat.as_deref(),
            Duration::from_secs(5),
        )?;
        if heartbeat < Duration::from_millis(100) {
            return Err(invalid("heartbeat", "must be at least 100ms"));
        }
        let heartbeat_summary = duration(
            "heartbeat_summary",
            raw.heartbeat_summary.as_deref(),
            Duration::from_secs(300),
        )?;
        if heartbeat_summary < Duration::from_secs(1) {
            return Err(invalid("heartbeat_summary", "must be at least 1s"));
        }
        if let Some(c) = &raw.class {
            let ok = c.strip_prefix("CLASS_").is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            });
            if !ok {
                return Err(invalid(
                    "class",
                    format!("{c:?} is not CLASS_ followed by A-Z, 0-9 or _"),
                ));
            }
        }
        let issuer_keys = raw
            .issuer_keys
            .unwrap_or_default()
            .iter()
            .map(|k| {
                PublicKey::trusted_hex(k.trim())
                    .map_err(|e| invalid("issuer_keys", format!("{k:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let capabilities = raw.capabilities.unwrap_or_default();
        if capabilities.len() > MAX_CAPABILITIES {
            return Err(invalid(
                "capabilities",
                format!("{} listed, at most {MAX_CAPABILITIES}", capabilities.len()),
            ));
        }
        if let Some(c) = capabilities
            .iter()
            .find(|c| c.is_empty() || c.len() > 64 || c.chars().any(char::is_control))
        {
            return Err(invalid(
                "capabilities",
                format!("{c:?}: 1–64 characters, no control characters"),
            ));
        }
        let mut handlers = std::collections::BTreeMap::new();
        for (verb, path) in raw.handlers.unwrap_or_default() {
            use baton_shared::command::Verb;
            let v = Verb::parse(&verb)
                .filter(|v| matches!(v, Verb::Orient | Verb::Decide | Verb::Act))
                .ok_or_else(|| {
                    invalid(
                        "handlers",
                        format!("{verb:?}: only orient, decide and act are served by executables (the others are built in)"),
                    )
                })?;
            if !path.is_absolute() {
                return Err(invalid(
                    "handlers",
                    format!("{verb}: {} is not an absolute path", path.display()),
                ));
            }
            handlers.insert(v, path);
        }
        let window = raw.window.unwrap_or(16);
        if !(1..=64).contains(&window) {
            return Err(invalid("window", format!("{window} is outside 1..=64")));
        }
        Ok(Config {
            key: raw.key.unwrap_or_else(|| data_dir.join("agent.key")),
            socket: raw.socket.unwrap_or_else(|| data_dir.join("agent.sock")),
            id,
            cluster,
            data_dir,
            gateway,
            gateway_key,
            resend_timeout: duration(
                "resend_timeout",
                raw.resend_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            checkpoint_interval: duration(
                "checkpoint_interval",
                raw.checkpoint_interval.as_deref(),
                Duration::from_secs(5),
            )?,
            window,
            budget: budget(raw.budget.as_deref())?,
            free_floor: size("free_floor", raw.free_floor.as_deref(), 64 * 1024 * 1024)?,
            retention: duration(
                "retention",
                raw.retention.as_deref(),
                Duration::from_secs(30 * 24 * 3600),
            )?,
            heartbeat,
            heartbeat_summary,
            class: raw.class,
            issuer_keys,
            capabilities,
            handlers,
        })
    }

    pub fn ledger_path(&self) -> PathBuf {
        ledger_path(&self.data_dir)
    }

    pub fn status_path(&self) -> PathBuf {
        status_path(&self.data_dir)
    }
}

pub fn ledger_path(data_dir: &Path) -> PathBuf {
    data_dir.join("ledger.redb")
}

pub fn status_path(data_dir: &Path) -> PathBuf {
    data_dir.join("status.json")
}

/// The commented default configuration (`print-default-config`).
pub const DEFAULT_CONFIG: &str = r#"# baton-agent configuration. Every key can also be given as a flag
# (--data-dir, --id, …) or an environment variable (BATON_AGENT_DATA_DIR, …);
# flags win over the environment, which wins over this file.

# This device's agent id and its cluster.
id = "pi-001"
cluster = "c1"

# State: ledger.redb and status.json live here.
data_dir = "/var/lib/baton"
# The identity lives outside the ledger, so a restored store keeps it.
key = "/etc/baton/agent.key"
# The local append API (mode 0660).
socket = "/run/baton/agent.sock"

# The gateway's broker. Without it the agent keeps its ledger offline.
gateway = "mqtt://gateway.local:1883"
# The gateway's public key (hex). Without it, the first gateway to answer is
# pinned and kept.
# gateway_key = "…"
# broker_password = "…"
# TLS: gateway = "mqtts://gateway.local:8883" and the broker's CA (without
# it, the system's trusted roots); a client certificate if the broker wants one.
# gateway_ca = "/etc/baton/broker-ca.pem"
# gateway_client_cert = "/etc/baton/agent-cert.pem"
# gateway_client_key = "/etc/baton/agent-key.pem"

# Hello again when no receipt advanced for this long.
resend_timeout = "10s"
# Sign a checkpoint at least this often while entries arrive.
checkpoint_interval = "5s"
# Batches in flight before a receipt must arrive (each ≤ 256 KiB; 16 keeps a
# catch-up of a million entries under 10 s on a LAN).
window = 16

# Disk (PROTOCOL §7 rule 2). An entry is deleted only after a gateway's
# receipt covers it: receipted entries older than `retention` go routinely,
# and any receipted entries (oldest first) when the ledger would exceed
# `budget` or the filesystem's free space falls below `free_floor`. When
# unreceipted entries alone leave no room, appends are refused with a
# `budget` error, and the next append that succeeds is preceded by a `gap`
# entry counting the refused ones.
budget = "1GiB"
free_floor = "64MiB"
retention = "30days"

# Heartbeats to the gateway (QoS 0: impedance profile, system metrics, ledger
# position), and a `heartbeat_summary` entry in the ledger at a slower pace
# so the history is in the chain without flooding it.
heartbeat = "5s"
heartbeat_summary = "5m"
# The class hint is derived from /proc/device-tree/model (Raspberry Pi →
# CLASS_E_LOCAL, Jetson → CLASS_D_GPU, anything else → CLASS_C_PERSISTENT).
# class = "CLASS_C_PERSISTENT"

# Coordination (PROTOCOL §9). Commands are obeyed only from these issuer
# keys (hex: the top gateway's, or any ancestor's). Without them, only
# commands the configured gateway_key issued itself; a key pinned on first
# contact never authorizes a command.
# issuer_keys = ["…"]
# What this device can do (a command's select.capabilities must all be
# here); reported in heartbeats.
# capabilities = ["camera"]
# Executables serving orient, decide and act (the other verbs are built
# in). Each runs twice: at receipt with BATON_PHASE=prepare (exit 0: READY;
# 10: context_divergence; 11: data_contradiction; anything else or still
# running at T + window: handler_failed / temporal_paradox; stdout, if JSON,
# is the result), then when the clock reaches T with BATON_PHASE=act. The
# payload is on stdin; BATON_COMMAND_HASH, BATON_COMMAND_ID, BATON_ISSUER,
# BATON_VERB, BATON_TARGET_MS (top's time) and BATON_TARGET_LOCAL_MS (this
# device's clock) in the environment. A program that serves a verb over
# the socket instead (first line {"serve": ["act"]}) goes first.
# [handlers]
# act = "/usr/lib/baton/act"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_config_matches_the_systemd_unit() {
        // systemd/baton-agent.service: StateDirectory=baton, RuntimeDirectory=baton
        let raw: RawConfig = toml::from_str(include_str!("../../systemd/agent.toml")).unwrap();
        let c = Config::validate(raw).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/baton"));
        assert_eq!(c.socket, PathBuf::from("/run/baton/agent.sock"));
        assert_eq!(c.key, PathBuf::from("/etc/baton/agent.key"));
    }

    #[test]
    fn the_default_config_validates() {
        let raw: RawConfig = toml::from_str(DEFAULT_CONFIG).unwrap();
        let c = Config::validate(raw).unwrap();
        assert_eq!(c.key, PathBuf::from("/etc/baton/agent.key"));
        assert_eq!(c.gateway.unwrap().port, 1883);
        assert_eq!(c.checkpoint_interval, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_the_key() {
        let e = toml::from_str::<RawConfig>("gateway_url = \"x\"").unwrap_err();
        assert!(e.to_string().contains("gateway_url"), "{e}");
        let raw = RawConfig {
            id: Some("pi-1".into()),
            cluster: Some("c".into()),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        let c = Config::validate(raw.clone()).unwrap();
        assert_eq!(c.key, PathBuf::from("/tmp/x/agent.key"));
        assert!(c.gateway.is_none());
        for (bad, key) in [
            (
                RawConfig {
                    resend_timeout: Some("soon".into()),
                    ..raw.clone()
                },
                "\"resend_timeout\"",
            ),
            (
                RawConfig {
                    gateway: Some("tcp://h".into()),
                    ..raw.clone()
                },
                "\"gateway\"",
            ),
            (
                RawConfig {
                    gateway_key: Some("00".into()),
                    ..raw.clone()
                },
                "\"gateway_key\"",
            ),
            (
                RawConfig {
                    window: Some(0),
                    ..raw.clone()
                },
                "\"window\"",
            ),
            (
                RawConfig {
                    budget: Some("lots".into()),
                    ..raw.clone()
                },
                "\"budget\"",
            ),
            (
                RawConfig {
                    budget: Some("20KiB".into()),
                    ..raw.clone()
                },
                "below the least budget",
            ),
            (
                RawConfig {
                    id: Some("Pi 1".into()),
                    ..raw.clone()
                },
                "\"id\"",
            ),
        ] {
            let e = Config::validate(bad).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}
