//! MQTT client settings shared by the agent's uplink and the gateway's
//! client: TCP_NODELAY, a generous connect timeout, the protocol's packet
//! size, and TLS (`mqtts://`) through rustls with the ring provider.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use baton_shared::SecretKey;
use baton_shared::backoff::Backoff;
use baton_shared::wire::MQTT_MAX_PACKET;
use rumqttc::{
    ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Packet, TlsConfiguration,
    Transport,
};
use tokio::sync::mpsc;

/// TLS to a broker: the CA to trust (none: the system's roots) and an
/// optional client certificate and key (PEM files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

fn read(what: &str, path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// The transport for `tls` (plain TCP when `None`).
pub fn transport(tls: Option<&Tls>) -> anyhow::Result<Transport> {
    let Some(tls) = tls else {
        return Ok(Transport::Tcp);
    };
    let client_auth = match (&tls.client_cert, &tls.client_key) {
        (Some(c), Some(k)) => Some((read("client certificate", c)?, read("client key", k)?)),
        (None, None) => None,
        _ => anyhow::bail!("a client certificate needs its key, and a key its certificate"),
    };
    let config = match &tls.ca {
        Some(ca) => TlsConfiguration::Simple {
            ca: read("CA certificate", ca)?,
            alpn: None,
            client_auth,
        },
        None if client_auth.is_some() => {
            anyhow::bail!("a client certificate needs the broker's CA file too")
        }
        // The system's trusted roots.
        None => TlsConfiguration::default(),
    };
    Ok(Transport::Tls(config))
}

/// How a client proves who it is to the broker.
#[derive(Clone)]
pub enum Credentials {
    /// A configured password (an external broker's password file), or none.
    Password(Option<String>),
    /// A fresh signature login by the client's own key at every connect
    /// (Baton's embedded broker, `baton_shared::login`); the public key is
    /// offered while the device may still be enrolled on first use.
    Signed {
        key: Box<SecretKey>,
        offer_key: bool,
        counter: Arc<LoginCounter>,
    },
}

/// The login counter of signature logins: the wall clock in ms, or one
/// more than the last value used when the clock went back; with a file,
/// the last value survives restarts (a device without a real-time clock).
#[derive(Debug)]
pub struct LoginCounter {
    path: Option<PathBuf>,
    last: Mutex<i64>,
}

impl LoginCounter {
    /// A counter kept in memory (servers, whose clocks are kept).
    pub fn in_memory() -> Arc<LoginCounter> {
        Arc::new(LoginCounter {
            path: None,
            last: Mutex::new(0),
        })
    }

    /// A counter whose last value is kept in `path`.
    pub fn persistent(path: PathBuf) -> Arc<LoginCounter> {
        let last = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Arc::new(LoginCounter {
            path: Some(path),
            last: Mutex::new(last),
        })
    }

    /// The next value: above every earlier one. Kept in the file before
    /// it is used (a failure to keep it is logged; the value still grows
    /// while the process lives).
    pub fn next(&self) -> i64 {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = crate::time::unix_ms().max(last.saturating_add(1));
        *last = next;
        if let Some(p) = &self.path
            && let Err(e) = crate::keys::write_secret(p, next.to_string().as_bytes(), true)
        {
            tracing::warn!(path = %p.display(), error = %format!("{e:#}"), "keeping the login counter failed");
        }
        next
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password(p) => {
                write!(f, "Password({})", if p.is_some() { "…" } else { "none" })
            }
            Credentials::Signed { offer_key, .. } => {
                write!(f, "Signed {{ offer_key: {offer_key} }}")
            }
        }
    }
}

impl Credentials {
    /// A configured password if there is one, else signature logins by `key`.
    pub fn password_or_signed(
        password: Option<String>,
        key: SecretKey,
        offer_key: bool,
        counter: Arc<LoginCounter>,
    ) -> Self {
        match password {
            Some(p) => Credentials::Password(Some(p)),
            None => Credentials::Signed {
                key: Box::new(key),
                offer_key,
                counter,
            },
        }
    }

    /// Sets the user name (the client id unless given) and a password for
    /// the next connect; call again before every reconnect, so that a
    /// signature login is fresh.
    pub fn apply(&self, opts: &mut MqttOptions, username: Option<&str>) {
        let client_id = opts.client_id();
        let password = match self {
            Credentials::Password(p) => p.clone().unwrap_or_default(),
            Credentials::Signed {
                key,
                offer_key,
                counter,
            } => baton_shared::login::password(key, &client_id, counter.next(), *offer_key),
        };
        opts.set_credentials(username.unwrap_or(&client_id), password);
    }
}

/// Client options as every Baton client sets them: clean session (the
/// ledger, not the broker, is what is resent), 30 s keep-alive, the
/// protocol's packet size, credentials (the username is the client id
/// unless given), and the transport.
pub fn options(
    client_id: &str,
    host: &str,
    port: u16,
    username: Option<&str>,
    credentials: &Credentials,
    tls: Option<&Tls>,
) -> anyhow::Result<MqttOptions> {
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(MQTT_MAX_PACKET, MQTT_MAX_PACKET);
    opts.set_clean_session(true);
    credentials.apply(&mut opts, username);
    opts.set_transport(transport(tls)?);
    Ok(opts)
}

/// TCP_NODELAY (small receipts and batches must not wait on Nagle) and a
/// 30 s connect timeout (TLS over a slow link).
pub fn network_options() -> NetworkOptions {
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(30);
    net
}

/// What one poll of the event loop gave the pump's hook.
#[derive(Debug)]
pub enum Polled<'a> {
    /// An event of the current session (a ConnAck has already reset the
    /// backoff).
    Event(Event),
    /// The session ended; the pump waits `retry_in` before the next
    /// connect, whose options (a new last will, say) may be set here.
    Lost {
        error: ConnectionError,
        retry_in: Duration,
        options: &'a mut MqttOptions,
    },
}

/// A lost or refused session in an operator's words: a refused login says
/// so and what to check, an unreachable broker says it cannot be reached.
pub fn describe(error: &ConnectionError) -> String {
    use rumqttc::ConnectReturnCode as Code;
    match error {
        ConnectionError::ConnectionRefused(Code::BadUserNamePassword | Code::NotAuthorized) => {
            "the broker refused the login (not authorised): check the device is enrolled \
             and its broker password or key"
                .to_owned()
        }
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection ({code:?})")
        }
        ConnectionError::Io(e) => format!("cannot reach the broker: {e}"),
        ConnectionError::NetworkTimeout => "the broker did not answer in time".to_owned(),
        other => format!("the broker connection failed: {other}"),
    }
}

impl Polled<'_> {
    /// Logs a lost session of the `what` client and when it retries; true
    /// if this was one.
    pub fn warn_if_lost(&self, what: &str) -> bool {
        match self {
            Polled::Lost {
                error, retry_in, ..
            } => {
                tracing::warn!(error = describe(error), ?retry_in, "{what} connection lost");
                true
            }
            Polled::Event(_) => false,
        }
    }
}

/// Reconnect pacing of the gateway's clients (ingest and forwarder): 0.2 s
/// doubling to 10 s, with jitter from `seed`. (The agent paces its own,
/// slower: it is one of thousands reconnecting to one broker.)
pub fn gateway_backoff(seed: u64) -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(10), seed)
}

/// The one MQTT poller of every Baton client (the agent's link, the
/// gateway's ingest, the forwarder): it polls `eventloop` and nothing else,
/// hands what `hook` makes of each poll to `to`, and paces reconnects with
/// `backoff` (reset by every ConnAck). It returns when `to` is closed.
///
/// Run it as one long-lived future — its own task, or beside its reader
/// in a `select!` that never drops it: rumqttc's `poll` is not cancel-safe
/// while it connects. Polled straight from a `select!`, every append or
/// heartbeat cancelled a connect waiting for its ConnAck; the broker was
/// left with a half-open session whose cleanup fired the last will of the
/// session that replaced it. The hook runs inside the pump, so it must not
/// wait: publish from it with `try_publish` only (a full client queue is
/// covered by the protocol's resend timers).
pub async fn pump<T>(
    mut eventloop: EventLoop,
    mut backoff: Backoff,
    to: mpsc::Sender<T>,
    mut hook: impl FnMut(Polled<'_>) -> Option<T>,
) {
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                    backoff.reset();
                }
                if let Some(out) = hook(Polled::Event(event))
                    && to.send(out).await.is_err()
                {
                    return;
                }
            }
            Err(error) => {
                let retry_in = backoff.next_delay();
                let lost = Polled::Lost {
                    error,
                    retry_in,
                    options: &mut eventloop.mqtt_options,
                };
                if let Some(out) = hook(lost)
                    && to.send(out).await.is_err()
                {
                    return;
                }
                if to.is_closed() {
                    return;
                }
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_logins_say_what_to_check() {
        use rumqttc::ConnectReturnCode as Code;
        let refused = describe(&ConnectionError::ConnectionRefused(Code::NotAuthorized));
        assert!(refused.contains("not authorised"), "{refused}");
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let down = describe(&ConnectionError::Io(io));
        assert!(down.starts_with("cannot reach the broker"), "{down}");
    }

    #[test]
    fn tls_settings_are_checked() {
        assert!(matches!(transport(None).unwrap(), Transport::Tcp));
        let missing = Tls {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Tls::default()
        };
        let Err(e) = transport(Some(&missing)) else {
            panic!("a missing CA file is an error");
        };
        let e = format!("{e:#}");
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let half = Tls {
            client_cert: Some("/x".into()),
            ..Tls::default()
        };
        assert!(transport(Some(&half)).is_err());
        assert!(matches!(
            transport(Some(&Tls::default())).unwrap(),
            Transport::Tls(_)
        ));
    }
}
