//! MQTT client settings shared by the agent's uplink and the gateway's
//! client: TCP_NODELAY, a generous connect timeout, the protocol's packet
//! size, and TLS (`mqtts://`) through rustls with the ring provider.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
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

/// Client options as every Baton client sets them: clean session (the
/// ledger, not the broker, is what is resent), 30 s keep-alive, the
/// protocol's packet size, credentials (the username is the client id
/// unless given), and the transport.
pub fn options(
    client_id: &str,
    host: &str,
    port: u16,
    username: Option<&str>,
    password: Option<&str>,
    tls: Option<&Tls>,
) -> anyhow::Result<MqttOptions> {
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(MQTT_MAX_PACKET, MQTT_MAX_PACKET);
    opts.set_clean_session(true);
    opts.set_credentials(username.unwrap_or(client_id), password.unwrap_or_default());
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

impl Polled<'_> {
    /// Logs a lost session of the `what` client and when it retries; true
    /// if this was one.
    pub fn warn_if_lost(&self, what: &str) -> bool {
        match self {
            Polled::Lost {
                error, retry_in, ..
            } => {
                tracing::warn!(%error, ?retry_in, "{what} connection lost");
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
