//! Configuration: a TOML file (every key optional) overridden by flags and
//! environment variables, validated into a [`Config`] that cannot be wrong.
//! Unknown keys and bad values are errors that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_shared::{AgentId, ClusterId};
use serde::Deserialize;

/// The file's shape; every field optional so flags can fill the rest.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub id: Option<String>,
    pub cluster: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub keys_dir: Option<PathBuf>,
    pub mqtt_listen: Option<String>,
    pub http_listen: Option<String>,
    pub broker: Option<String>,
    pub broker_username: Option<String>,
    pub broker_password: Option<String>,
    /// TLS (`mqtts://`): the broker's CA file (none: the system's roots).
    pub broker_ca: Option<PathBuf>,
    pub broker_client_cert: Option<PathBuf>,
    pub broker_client_key: Option<PathBuf>,
    pub resend_timeout: Option<String>,
    pub checkpoint_interval: Option<String>,
    pub max_agents: Option<usize>,
    pub phi_suspect: Option<f64>,
    pub phi_offline: Option<f64>,
    pub clock_band: Option<String>,
    pub summary_interval: Option<String>,
    pub summary_chain_interval: Option<String>,
    /// Circuit breakers per child (PROTOCOL §9): outcomes remembered, the
    /// fewest before judging, the failure share that opens, the pause
    /// before probing, the probes, the healthy time that closes.
    pub breaker_window: Option<u32>,
    pub breaker_min_samples: Option<u32>,
    pub breaker_failure_rate: Option<f64>,
    pub breaker_open_for: Option<String>,
    pub breaker_probes: Option<u32>,
    pub breaker_healthy_for: Option<String>,
    /// At the top: the wait for chains before a child's counts that they do
    /// not bear out raise `command_trail_mismatch`.
    pub command_trail_grace: Option<String>,
    /// The least time between two deliveries of one command: a burst is
    /// sent early enough to drain by each one's time.
    pub command_send_spacing: Option<String>,
    /// The parent gateway's broker (`mqtt://` or `mqtts://`): forward
    /// every chain held here to it (PROTOCOL §8).
    pub upstream: Option<String>,
    /// The parent gateway's public key (64 hex characters).
    pub upstream_key: Option<String>,
    /// Keys whose commands this gateway relays from its parent (PROTOCOL
    /// §9 `issuer_keys`: the top's, or any ancestor's); none: only commands
    /// the parent issued itself.
    pub issuer_keys: Option<Vec<String>>,
    pub upstream_username: Option<String>,
    pub upstream_password: Option<String>,
    pub upstream_ca: Option<PathBuf>,
    pub upstream_client_cert: Option<PathBuf>,
    pub upstream_client_key: Option<PathBuf>,
    /// Embedded broker: `keys` (signature logins and the topic ACL) or `none`.
    pub broker_auth: Option<String>,
    /// HTTP: `token` (operator token for every state change) or `none`.
    pub http_auth: Option<String>,
    /// Require the operator token for reads too.
    pub http_read_auth: Option<bool>,
    /// The operator token file (default `<data_dir>/operator.token`).
    pub operator_token: Option<PathBuf>,
    /// Allow an unauthenticated HTTP or broker listener beyond loopback.
    pub allow_unauthenticated: Option<bool>,
    /// Trust on first use: the longest window, the most enrollments in one
    /// window, and the most per minute.
    pub enroll_window_max: Option<String>,
    pub enroll_window_agents: Option<u64>,
    pub enroll_rate: Option<u32>,
    /// HTTP: the most open connections, and how long a client may take to
    /// send a request's headers (or sit idle between requests).
    pub http_max_connections: Option<usize>,
    pub http_header_timeout: Option<String>,
    /// Keep every chain as live daily files `<dir>/<agent>/YYYY-MM-DD.jsonl`.
    pub daily_dir: Option<PathBuf>,
    /// Copy every chain into PostgreSQL (`postgres://user@host/db`).
    pub archive: Option<String>,
    /// With `archive`: keep only the newest N entries of each chain here.
    pub retain_entries: Option<u64>,
    /// With `archive`: the CA of the server's certificate (PEM).
    pub archive_ca: Option<PathBuf>,
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        baton_runtime::config::read_toml(path)
    }

    /// Values in `over` win.
    pub fn merge(self, over: RawConfig) -> RawConfig {
        RawConfig {
            id: over.id.or(self.id),
            cluster: over.cluster.or(self.cluster),
            data_dir: over.data_dir.or(self.data_dir),
            key: over.key.or(self.key),
            keys_dir: over.keys_dir.or(self.keys_dir),
            mqtt_listen: over.mqtt_listen.or(self.mqtt_listen),
            http_listen: over.http_listen.or(self.http_listen),
            broker: over.broker.or(self.broker),
            broker_username: over.broker_username.or(self.broker_username),
            broker_password: over.broker_password.or(self.broker_password),
            broker_ca: over.broker_ca.or(self.broker_ca),
            broker_client_cert: over.broker_client_cert.or(self.broker_client_cert),
            broker_client_key: over.broker_client_key.or(self.broker_client_key),
            resend_timeout: over.resend_timeout.or(self.resend_timeout),
            checkpoint_interval: over.checkpoint_interval.or(self.checkpoint_interval),
            max_agents: over.max_agents.or(self.max_agents),
            phi_suspect: over.phi_suspect.or(self.phi_suspect),
            phi_offline: over.phi_offline.or(self.phi_offline),
            clock_band: over.clock_band.or(self.clock_band),
            summary_interval: over.summary_interval.or(self.summary_interval),
            summary_chain_interval: over.summary_chain_interval.or(self.summary_chain_interval),
            breaker_window: over.breaker_window.or(self.breaker_window),
            breaker_min_samples: over.breaker_min_samples.or(self.breaker_min_samples),
            breaker_failure_rate: over.breaker_failure_rate.or(self.breaker_failure_rate),
            breaker_open_for: over.breaker_open_for.or(self.breaker_open_for),
            breaker_probes: over.breaker_probes.or(self.breaker_probes),
            breaker_healthy_for: over.breaker_healthy_for.or(self.breaker_healthy_for),
            command_trail_grace: over.command_trail_grace.or(self.command_trail_grace),
            command_send_spacing: over.command_send_spacing.or(self.command_send_spacing),
            upstream: over.upstream.or(self.upstream),
            upstream_key: over.upstream_key.or(self.upstream_key),
            issuer_keys: over.issuer_keys.or(self.issuer_keys),
            upstream_username: over.upstream_username.or(self.upstream_username),
            upstream_password: over.upstream_password.or(self.upstream_password),
            upstream_ca: over.upstream_ca.or(self.upstream_ca),
            upstream_client_cert: over.upstream_client_cert.or(self.upstream_client_cert),
            upstream_client_key: over.upstream_client_key.or(self.upstream_client_key),
            broker_auth: over.broker_auth.or(self.broker_auth),
            http_auth: over.http_auth.or(self.http_auth),
            http_read_auth: over.http_read_auth.or(self.http_read_auth),
            operator_token: over.operator_token.or(self.operator_token),
            allow_unauthenticated: over.allow_unauthenticated.or(self.allow_unauthenticated),
            enroll_window_max: over.enroll_window_max.or(self.enroll_window_max),
            enroll_window_agents: over.enroll_window_agents.or(self.enroll_window_agents),
            enroll_rate: over.enroll_rate.or(self.enroll_rate),
            http_max_connections: over.http_max_connections.or(self.http_max_connections),
            http_header_timeout: over.http_header_timeout.or(self.http_header_timeout),
            daily_dir: over.daily_dir.or(self.daily_dir),
            archive: over.archive.or(self.archive),
            retain_entries: over.retain_entries.or(self.retain_entries),
            archive_ca: over.archive_ca.or(self.archive_ca),
        }
    }
}

pub use baton_runtime::config::{ConfigError, parse_mqtt_url};
use baton_runtime::config::{duration, invalid};

/// Where MQTT comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// rumqttd in-process, listening on `listen`.
    Embedded { listen: SocketAddr },
    /// An external broker (Mosquitto, EMQX, NanoMQ).
    External {
        host: String,
        port: u16,
        username: Option<String>,
        password: Option<String>,
        /// `Some` for `mqtts://`.
        tls: Option<baton_runtime::mqtt::Tls>,
    },
}

/// The parent gateway this one forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<baton_runtime::mqtt::Tls>,
    /// The parent's key: its receipts count only under it.
    pub key: baton_shared::PublicKey,
    /// Keys whose commands are relayed (empty: only the parent's own).
    pub issuer_keys: Vec<baton_shared::PublicKey>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: AgentId,
    pub cluster: ClusterId,
    pub data_dir: PathBuf,
    pub key: PathBuf,
    pub keys_dir: Option<PathBuf>,
    pub broker: Broker,
    pub http_listen: SocketAddr,
    pub resend_timeout: Duration,
    pub checkpoint_interval: Duration,
    pub max_agents: usize,
    pub liveness: Liveness,
    pub upstream: Option<Upstream>,
    pub security: Security,
    /// Live daily files of every chain held (a derived view; none: off).
    pub daily_dir: Option<PathBuf>,
    /// The PostgreSQL archive's connection string (none: off).
    pub archive: Option<String>,
    /// Entries of each chain kept in the store once archived (none: all).
    pub retain_entries: Option<u64>,
    /// The archive server's CA (PEM; none: the system's roots).
    pub archive_ca: Option<PathBuf>,
}

/// Who may do what (README, Security).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// The embedded broker authenticates every client and applies the
    /// topic ACL (`broker_auth = "keys"`, the default).
    pub broker_auth: bool,
    /// State-changing HTTP requests need the operator token (default).
    pub http_auth: bool,
    /// Reads need it too (default: open, on loopback).
    pub http_read_auth: bool,
    pub token_file: PathBuf,
    pub first_use: FirstUseLimits,
    pub http: HttpLimits,
}

/// What HTTP clients can hold of the gateway: each connection is a file
/// descriptor and a task, so there are at most `max_connections` of them
/// (more are closed at accept, and counted), and a client that does not
/// send a request's headers within `header_timeout` (the first request's,
/// or the next one's on a kept-alive connection) loses its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Bounds of trust on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstUseLimits {
    /// The longest window an operator may open.
    pub max_window: Duration,
    /// The most agents one window enrolls.
    pub max_agents: u64,
    /// The most enrollments per minute.
    pub per_minute: u32,
}

impl Default for FirstUseLimits {
    fn default() -> Self {
        FirstUseLimits {
            max_window: Duration::from_secs(24 * 3600),
            max_agents: 1000,
            per_minute: 60,
        }
    }
}

impl Security {
    /// Everything on: signature logins, the ACL, the operator token.
    pub fn defaults(data_dir: &Path) -> Security {
        Security {
            broker_auth: true,
            http_auth: true,
            http_read_auth: false,
            token_file: data_dir.join("operator.token"),
            first_use: FirstUseLimits::default(),
            http: HttpLimits::default(),
        }
    }

    fn validate(
        raw: &RawConfig,
        data_dir: &Path,
        embedded: Option<SocketAddr>,
        http_listen: SocketAddr,
    ) -> Result<Security, ConfigError> {
        let mut s = Security::defaults(data_dir);
        let switch = |key: &'static str, v: Option<&str>, on: &str| match v {
            None => Ok(true),
            Some(x) if x == on => Ok(true),
            Some("none") => Ok(false),
            Some(x) => Err(invalid(
                key,
                format!("{x:?}: expected \"{on}\" or \"none\""),
            )),
        };
        s.broker_auth = switch("broker_auth", raw.broker_auth.as_deref(), "keys")?;
        s.http_auth = switch("http_auth", raw.http_auth.as_deref(), "token")?;
        s.http_read_auth = raw.http_read_auth.unwrap_or(false);
        if s.http_read_auth && !s.http_auth {
            return Err(invalid("http_read_auth", "needs http_auth = \"token\""));
        }
        if let Some(p) = &raw.operator_token {
            s.token_file.clone_from(p);
        }
        let f = &mut s.first_use;
        f.max_window = duration(
            "enroll_window_max",
            raw.enroll_window_max.as_deref(),
            f.max_window,
        )?;
        f.max_agents = raw.enroll_window_agents.unwrap_or(f.max_agents);
        f.per_minute = raw.enroll_rate.unwrap_or(f.per_minute);
        if f.per_minute == 0 {
            return Err(invalid("enroll_rate", "must be at least 1 per minute"));
        }
        let h = &mut s.http;
        h.max_connections = raw.http_max_connections.unwrap_or(h.max_connections);
        if h.max_connections == 0 {
            return Err(invalid("http_max_connections", "must be at least 1"));
        }
        h.header_timeout = duration(
            "http_header_timeout",
            raw.http_header_timeout.as_deref(),
            h.header_timeout,
        )?;
        if h.header_timeout.is_zero() {
            return Err(invalid("http_header_timeout", "must be more than 0"));
        }
        // An unauthenticated listener beyond loopback is a choice to say.
        if !raw.allow_unauthenticated.unwrap_or(false) {
            if !s.http_auth && !http_listen.ip().is_loopback() {
                return Err(invalid(
                    "http_auth",
                    format!(
                        "\"none\" on {http_listen}, beyond loopback: set allow_unauthenticated = true to mean it"
                    ),
                ));
            }
            if let Some(listen) = embedded
                && !s.broker_auth
                && !listen.ip().is_loopback()
            {
                return Err(invalid(
                    "broker_auth",
                    format!(
                        "\"none\" on {listen}, beyond loopback: set allow_unauthenticated = true to mean it"
                    ),
                ));
            }
        }
        Ok(s)
    }
}

/// `command_send_spacing`'s default: 2,000 deliveries a second leave one
/// gateway and its broker without a queue (bench-coord at 1,000 agents,
/// on time: none 52%, 250 µs 88%, 500 µs 98%, 1 ms 91%; BENCHMARKS.md).
pub const DEFAULT_SEND_SPACING: Duration = Duration::from_micros(500);

/// Liveness and summaries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Liveness {
    pub thresholds: baton_shared::liveness::Thresholds,
    /// The cluster summary is published (retained) this often.
    pub summary_interval: Duration,
    /// … and written to the gateway's chain this often.
    pub summary_chain_interval: Duration,
    /// Each child's circuit breaker for commands (PROTOCOL §9).
    pub breaker: baton_shared::breaker::BreakerConfig,
    /// At the top: how long after a command is final a child gateway's
    /// counts may wait for the chains that bear them out.
    pub trail_grace: Duration,
    /// The least time between two deliveries of one command.
    pub send_spacing: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            thresholds: baton_shared::liveness::Thresholds::default(),
            summary_interval: Duration::from_secs(10),
            summary_chain_interval: Duration::from_secs(300),
            breaker: baton_shared::breaker::BreakerConfig::default(),
            trail_grace: Duration::from_secs(60),
            send_spacing: DEFAULT_SEND_SPACING,
        }
    }
}

impl Liveness {
    fn validate(raw: &RawConfig) -> Result<Liveness, ConfigError> {
        let d = Liveness::default();
        let mut t = d.thresholds;
        if let Some(p) = raw.phi_suspect {
            if !(p.is_finite() && p > 0.0) {
                return Err(invalid(
                    "phi_suspect",
                    format!("{p} is not a positive number"),
                ));
            }
            t.phi_suspect = p;
            t.phi_offline = t.phi_offline.max(2.0 * p);
        }
        if let Some(p) = raw.phi_offline {
            if !(p.is_finite() && p > t.phi_suspect) {
                return Err(invalid(
                    "phi_offline",
                    format!("{p} must be above phi_suspect ({})", t.phi_suspect),
                ));
            }
            t.phi_offline = p;
        }
        let band = duration(
            "clock_band",
            raw.clock_band.as_deref(),
            Duration::from_secs(2),
        )?;
        t.clock_band_ms = i64::try_from(band.as_millis()).unwrap_or(i64::MAX);
        let summary_interval = duration(
            "summary_interval",
            raw.summary_interval.as_deref(),
            d.summary_interval,
        )?;
        if summary_interval < Duration::from_millis(100) {
            return Err(invalid("summary_interval", "must be at least 100ms"));
        }
        let summary_chain_interval = duration(
            "summary_chain_interval",
            raw.summary_chain_interval.as_deref(),
            d.summary_chain_interval,
        )?;
        if summary_chain_interval < Duration::from_secs(1) {
            return Err(invalid("summary_chain_interval", "must be at least 1s"));
        }
        let b = d.breaker;
        let breaker = baton_shared::breaker::BreakerConfig {
            window: match raw.breaker_window {
                Some(n @ 1..=64) => n,
                Some(n) => return Err(invalid("breaker_window", format!("{n} is not in 1–64"))),
                None => b.window,
            },
            min_samples: raw.breaker_min_samples.unwrap_or(b.min_samples).max(1),
            failure_rate: match raw.breaker_failure_rate {
                Some(r) if r > 0.0 && r <= 1.0 => r,
                Some(r) => {
                    return Err(invalid(
                        "breaker_failure_rate",
                        format!("{r} is not in (0, 1]"),
                    ));
                }
                None => b.failure_rate,
            },
            open_for: duration(
                "breaker_open_for",
                raw.breaker_open_for.as_deref(),
                b.open_for,
            )?,
            probes: raw.breaker_probes.unwrap_or(b.probes).max(1),
            healthy_for: duration(
                "breaker_healthy_for",
                raw.breaker_healthy_for.as_deref(),
                b.healthy_for,
            )?,
        };
        Ok(Liveness {
            thresholds: t,
            summary_interval,
            summary_chain_interval,
            breaker,
            trail_grace: duration(
                "command_trail_grace",
                raw.command_trail_grace.as_deref(),
                d.trail_grace,
            )?,
            send_spacing: duration(
                "command_send_spacing",
                raw.command_send_spacing.as_deref(),
                d.send_spacing,
            )?,
        })
    }
}

fn addr(key: &'static str, v: Option<&str>, default: &str) -> Result<SocketAddr, ConfigError> {
    let s = v.unwrap_or(default);
    s.parse().map_err(|e| invalid(key, format!("{s:?}: {e}")))
}

impl Config {
    pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let liveness = Liveness::validate(&raw)?;
        let security_raw = raw.clone();
        let id = raw.id.ok_or(ConfigError::Missing { key: "id" })?;
        let id = AgentId::new(id).map_err(|e| invalid("id", e.to_string()))?;
        let cluster = raw.cluster.ok_or(ConfigError::Missing { key: "cluster" })?;
        let cluster = ClusterId::new(cluster).map_err(|e| invalid("cluster", e.to_string()))?;
        let data_dir = raw
            .data_dir
            .ok_or(ConfigError::Missing { key: "data_dir" })?;
        let key = raw.key.unwrap_or_else(|| data_dir.join("gateway.key"));
        let http_listen = addr("http_listen", raw.http_listen.as_deref(), "127.0.0.1:8080")?;
        let embedded = match raw.broker {
            None => Some(addr(
                "mqtt_listen",
                raw.mqtt_listen.as_deref(),
                "127.0.0.1:1883",
            )?),
            Some(_) => None,
        };
        let security = Security::validate(&security_raw, &data_dir, embedded, http_listen)?;
        let broker = match raw.broker {
            None if raw.broker_ca.is_some()
                || raw.broker_client_cert.is_some()
                || raw.broker_client_key.is_some() =>
            {
                return Err(invalid(
                    "broker_ca",
                    "TLS files are set but no external broker is",
                ));
            }
            None => Broker::Embedded {
                listen: addr("mqtt_listen", raw.mqtt_listen.as_deref(), "127.0.0.1:1883")?,
            },
            Some(url) => {
                let (host, port, tls) = parse_mqtt_url("broker", &url)?;
                Broker::External {
                    host,
                    port,
                    username: raw.broker_username,
                    password: raw.broker_password,
                    tls: baton_runtime::config::tls_settings(
                        "broker",
                        tls,
                        raw.broker_ca,
                        raw.broker_client_cert,
                        raw.broker_client_key,
                    )?,
                }
            }
        };
        let issuer_keys = raw
            .issuer_keys
            .iter()
            .flatten()
            .map(|k| baton_shared::PublicKey::trusted_hex(k.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("issuer_keys", e.to_string()))?;
        let upstream = match raw.upstream {
            None => {
                if raw.upstream_key.is_some() {
                    return Err(invalid("upstream_key", "set, but no upstream broker is"));
                }
                if !issuer_keys.is_empty() {
                    return Err(invalid("issuer_keys", "set, but no upstream broker is"));
                }
                None
            }
            Some(url) => {
                let (host, port, tls) = parse_mqtt_url("upstream", &url)?;
                let key = raw.upstream_key.ok_or(ConfigError::Missing {
                    key: "upstream_key",
                })?;
                let key = baton_shared::PublicKey::trusted_hex(key.trim())
                    .map_err(|e| invalid("upstream_key", e.to_string()))?;
                // The parent's chains use the same topics as this cluster's
                // agents: on one broker each would hear the other's receipts.
                let same = match &broker {
                    Broker::Embedded { listen } => {
                        port == listen.port()
                            && (host == listen.ip().to_string()
                                || host == "localhost"
                                || listen.ip().is_unspecified())
                    }
                    Broker::External {
                        host: h, port: p, ..
                    } => *h == host && *p == port,
                };
                if same {
                    return Err(invalid(
                        "upstream",
                        format!(
                            "{url:?} is this cluster's own broker; the parent must be on another one (PROTOCOL §8)"
                        ),
                    ));
                }
                Some(Upstream {
                    host,
                    port,
                    username: raw.upstream_username,
                    password: raw.upstream_password,
                    tls: baton_runtime::config::tls_settings(
                        "upstream",
                        tls,
                        raw.upstream_ca,
                        raw.upstream_client_cert,
                        raw.upstream_client_key,
                    )?,
                    key,
                    issuer_keys,
                })
            }
        };
        let archive_set = raw.archive.is_some();
        Ok(Config {
            upstream,
            liveness,
            security,
            id,
            cluster,
            data_dir,
            key,
            keys_dir: raw.keys_dir,
            broker,
            http_listen,
            resend_timeout: duration(
                "resend_timeout",
                raw.resend_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            checkpoint_interval: duration(
                "checkpoint_interval",
                raw.checkpoint_interval.as_deref(),
                Duration::from_secs(60),
            )?,
            max_agents: raw.max_agents.unwrap_or(1000),
            daily_dir: raw.daily_dir,
            archive: match raw.archive {
                Some(url)
                    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) =>
                {
                    return Err(invalid("archive", "a postgres:// or postgresql:// URL"));
                }
                other => other,
            },
            retain_entries: match (raw.retain_entries, archive_set) {
                (Some(0), _) => {
                    return Err(invalid("retain_entries", "at least 1 (the head stays)"));
                }
                (Some(_), false) => {
                    return Err(invalid(
                        "retain_entries",
                        "set only with archive (entries leave only once PostgreSQL holds them)",
                    ));
                }
                (n, _) => n,
            },
            archive_ca: match (raw.archive_ca, archive_set) {
                (Some(_), false) => {
                    return Err(invalid("archive_ca", "set only with archive"));
                }
                (ca, _) => ca,
            },
        })
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("gateway.redb")
    }
}

/// The commented default configuration (`print-default-config`).
pub const DEFAULT_CONFIG: &str = r#"# baton-gateway configuration. Every key can also be given as a flag
# (--data-dir, --id, …) or an environment variable (BATON_GATEWAY_DATA_DIR, …);
# flags win over the environment, which wins over this file.

# This gateway's id (also the agent id of its own chain) and its cluster.
id = "gw-1"
cluster = "c1"

# State: the redb store lives here; the key defaults to <data_dir>/gateway.key.
data_dir = "/var/lib/baton-gateway"
# key = "/etc/baton/gateway.key"

# Trusted agent keys: a directory of <agent-id>.pub files (64 hex characters).
# keys_dir = "/etc/baton/agents"

# MQTT: the embedded broker listens here unless `broker` names an external one.
mqtt_listen = "127.0.0.1:1883"
# broker = "mqtt://127.0.0.1:1883"
# broker_username = "gw-1"
# broker_password = "…"
# TLS: broker = "mqtts://broker.local:8883" and the broker's CA (without it,
# the system's trusted roots); a client certificate if the broker wants one.
# broker_ca = "/etc/baton/broker-ca.pem"
# broker_client_cert = "/etc/baton/gateway-cert.pem"
# broker_client_key = "/etc/baton/gateway-key.pem"

# HTTP read side: /healthz, /metrics, /api/v1/…
http_listen = "127.0.0.1:8080"
# At most this many open HTTP connections (more are closed at once); a
# client must send a request's headers within the timeout, also between
# requests on a kept-alive connection.
http_max_connections = 256
http_header_timeout = "10s"

# Live daily files of every chain held here, <daily_dir>/<agent>/YYYY-MM-DD.jsonl
# as `export --format daily` writes them: appended after each commit, off the
# receipt path; delete the directory and restart to have it written again.
# daily_dir = "/var/lib/baton-gateway/daily"

# Copy every verified chain into PostgreSQL (append-only; README, "Archiving
# to PostgreSQL"). Off the receipt path; lags and catches up when it is away.
# archive = "postgres://baton@db.local/baton"
# With archive: keep only the newest N entries of each chain in this store
# (the gateway's own chain is always kept whole). Older ones go once the
# archive holds them, the parent (if any) has receipted them and the daily
# files (if any) hold them; so a top gateway runs for months in fixed disk.
# retain_entries = 100000
# TLS to the archive: the connection string's sslmode (require, prefer — the
# default — or disable); the server's certificate and host name are verified
# against this CA (PEM; a managed PostgreSQL's bundle), else the system's roots.
# archive_ca = "/etc/baton/archive-ca.pem"

# Delivery: rate limit of resend nacks (rule 5).
resend_timeout = "10s"
# How often the gateway's own chain records the heads it holds.
checkpoint_interval = "60s"

# Embedded broker connection limit (headroom is added on top).
max_agents = 1000

# Liveness. An agent's last will makes it `offline` at once; an agent that
# goes silent with its connection open is judged by a phi-accrual detector
# over its heartbeat arrivals: `suspect` at phi_suspect, `offline` at
# phi_offline (phi 8 ≈ a one-in-10⁸ chance that it is merely late).
phi_suspect = 8.0
phi_offline = 16.0
# An agent whose clock is off by more than this is flagged `clock_skewed`.
clock_band = "2s"
# The cluster summary: published retained on the cluster's summary topic
# this often, and written to the gateway's chain at the slower interval.
summary_interval = "10s"
summary_chain_interval = "5m"

# Commands (PROTOCOL §9): each child's circuit breaker opens when at least
# breaker_min_samples of its last breaker_window commands are in and
# breaker_failure_rate of them failed (unanswered by T + window, or
# handler_failed / temporal_paradox / clock_unsynced); after
# breaker_open_for it lets breaker_probes through, and closes once they
# succeeded and breaker_healthy_for passed without a failure.
breaker_window = 20
breaker_min_samples = 5
breaker_failure_rate = 0.5
breaker_open_for = "30s"
breaker_probes = 3
breaker_healthy_for = "30s"
# At the top: a child gateway whose READY count the agents' chains do not
# bear out this long after the command is final raises command_trail_mismatch.
command_trail_grace = "60s"
# A burst of deliveries leaves one at a time through this gateway and its
# broker: each is sent at least this long before the next, so the last is
# not late (2,000 a second; lower it for a faster broker).
command_send_spacing = "500us"

# Upstream: forward every chain held here (each agent's, unchanged, and this
# gateway's own) to a parent gateway on another broker, which must enroll
# this gateway first: `baton-gateway enroll --agent gw-1 --pubkey … --child-cluster c1`.
# upstream = "mqtt://sector.local:1883"
# upstream_key = "<the parent's public key, 64 hex>"
# Commands (PROTOCOL §9) relayed from the parent: by default only those the
# parent issued itself; list the top's key (or any ancestor's) to relay its.
# issuer_keys = ["<the top's public key, 64 hex>"]
# upstream_username = "gw-1"
# upstream_password = "…"
# upstream_ca = "/etc/baton/sector-ca.pem"

# Security (README, Security). The embedded broker authenticates each device
# by a fresh signature of its enrolled key (user name = agent id) and holds
# it to its own topics; "none" lets anyone publish anything.
broker_auth = "keys"
# Every state change over HTTP (enroll, unenroll, resolve, load, windows)
# needs `Authorization: Bearer <operator token>`; the token is made at the
# first start in operator_token (0600) and rotated with `operator-token --rotate`.
http_auth = "token"
http_read_auth = false
# operator_token = "/var/lib/baton-gateway/operator.token"
# "none" beyond loopback is refused unless this says so:
allow_unauthenticated = false
# Trust on first use: longest window, enrollments per window, per minute.
enroll_window_max = "24h"
enroll_window_agents = 1000
enroll_rate = 60
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_config_matches_the_systemd_unit() {
        // systemd/baton-gateway.service: StateDirectory=baton-gateway
        let raw: RawConfig = toml::from_str(include_str!("../../systemd/gateway.toml")).unwrap();
        let c = Config::validate(raw).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/baton-gateway"));
        assert_eq!(c.key, PathBuf::from("/etc/baton/gateway.key"));
        assert_eq!(c.keys_dir, Some(PathBuf::from("/etc/baton/agents")));
    }

    #[test]
    fn upstream_needs_a_key_and_another_broker() {
        let base = || RawConfig {
            id: Some("gw-1".into()),
            cluster: Some("c1".into()),
            data_dir: Some("/tmp/x".into()),
            mqtt_listen: Some("127.0.0.1:1883".into()),
            upstream: Some("mqtt://10.0.0.9:1884".into()),
            ..Default::default()
        };
        let e = Config::validate(base()).unwrap_err().to_string();
        assert!(e.contains("upstream_key"), "{e}");
        let key = baton_shared::SecretKey::from_seed(&[3; 32])
            .public()
            .to_hex();
        let c = Config::validate(RawConfig {
            upstream_key: Some(key.clone()),
            ..base()
        })
        .unwrap();
        let up = c.upstream.unwrap();
        assert_eq!((up.host.as_str(), up.port), ("10.0.0.9", 1884));
        let e = Config::validate(RawConfig {
            upstream: Some("mqtt://127.0.0.1:1883".into()),
            upstream_key: Some(key.clone()),
            ..base()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("own broker"), "{e}");
        let e = Config::validate(RawConfig {
            upstream_key: Some("00".repeat(32)),
            ..base()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstream_key"), "{e}");
        let e = Config::validate(RawConfig {
            upstream: None,
            upstream_key: Some(key),
            ..base()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstream_key"), "{e}");
    }

    #[test]
    fn retaining_fewer_entries_needs_the_archive_and_keeps_the_head() {
        let base = RawConfig {
            id: Some("gw".into()),
            cluster: Some("c".into()),
            data_dir: Some("/tmp".into()),
            retain_entries: Some(1000),
            ..Default::default()
        };
        let e = Config::validate(base.clone()).unwrap_err().to_string();
        assert!(e.contains("retain_entries") && e.contains("archive"), "{e}");
        let archived = RawConfig {
            archive: Some("postgres://baton@db/baton".into()),
            ..base
        };
        assert_eq!(
            Config::validate(archived.clone()).unwrap().retain_entries,
            Some(1000)
        );
        let e = Config::validate(RawConfig {
            retain_entries: Some(0),
            ..archived
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn the_default_config_parses_and_validates() {
        let raw: RawConfig = toml::from_str(DEFAULT_CONFIG).unwrap();
        let c = Config::validate(raw).unwrap();
        assert_eq!(c.resend_timeout, Duration::from_secs(10));
        assert_eq!(c.key, PathBuf::from("/var/lib/baton-gateway/gateway.key"));
        assert!(matches!(c.broker, Broker::Embedded { .. }));
    }

    #[test]
    fn errors_name_the_key() {
        let unknown = toml::from_str::<RawConfig>("idd = \"x\"").unwrap_err();
        assert!(unknown.to_string().contains("idd"), "{unknown}");
        let raw = RawConfig {
            id: Some("gw".into()),
            cluster: Some("c".into()),
            data_dir: Some("/tmp".into()),
            resend_timeout: Some("soon".into()),
            ..Default::default()
        };
        let e = Config::validate(raw.clone()).unwrap_err();
        assert!(
            e.to_string().starts_with("config key \"resend_timeout\""),
            "{e}"
        );
        let e = Config::validate(RawConfig {
            id: Some("GW".into()),
            ..raw.clone()
        })
        .unwrap_err();
        assert!(e.to_string().contains("\"id\""), "{e}");
        let e = Config::validate(RawConfig {
            broker: Some("tcp://x".into()),
            ..raw.clone()
        })
        .unwrap_err();
        assert!(e.to_string().contains("\"broker\""), "{e}");
        assert_eq!(
            Config::validate(RawConfig { id: None, ..raw }).unwrap_err(),
            ConfigError::Missing { key: "id" }
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = RawConfig {
            id: Some("a".into()),
            cluster: Some("c".into()),
            ..Default::default()
        };
        let flags = RawConfig {
            id: Some("b".into()),
            ..Default::default()
        };
        let merged = file.merge(flags);
        assert_eq!(merged.id.as_deref(), Some("b"));
        assert_eq!(merged.cluster.as_deref(), Some("c"));
    }

    #[test]
    fn mqtt_urls() {
        assert_eq!(
            parse_mqtt_url("broker", "mqtt://h:1884").unwrap(),
            ("h".into(), 1884, false)
        );
        assert_eq!(
            parse_mqtt_url("broker", "mqtt://h").unwrap(),
            ("h".into(), 1883, false)
        );
        assert_eq!(
            parse_mqtt_url("broker", "mqtts://h").unwrap(),
            ("h".into(), 8883, true)
        );
        assert!(parse_mqtt_url("broker", "mqtt://:1").is_err());
    }
}
