//! MQTT client settings shared by the agent's uplink and the gateway's
//! client: TCP_NODELAY, a generous connect timeout, the protocol's packet
//! size, and TLS (`mqtts://`) through rustls with the ring provider.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use baton_shared::wire::MQTT_MAX_PACKET;
use rumqttc::{MqttOptions, NetworkOptions, TlsConfiguration, Transport};

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
