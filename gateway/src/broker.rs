//! The embedded broker: rumqttd in-process, for the demo, `cargo test` and
//! small clusters. Production uses Mosquitto (`print-mosquitto-config`).
//!
//! Guards against rumqttd 0.20's measured defects (DESIGN.md, Broker):
//! - a refused client id containing `+ $ # /` that reconnects in a loop can
//!   stop the listener accepting anyone: such ids are refused in the auth
//!   hook, before rumqttd's own handling sees them;
//! - the connection limit is given headroom over the expected agents;
//! - ring buffers are sized (16 MiB × 4 segments), not left at defaults
//!   that stay resident at ~1.7 GB;
//! - no `alerts` metrics without `meters` (that combination panics);
//! - the gateway keeps its own state table and never relies on retained
//!   wildcard snapshots;
//! - no TCP_NODELAY on accepted sockets (10× slower windowed delivery):
//!   the workspace builds rumqttd from `vendor/rumqttd`, patched to set it
//!   (`vendor/rumqttd/BATON-PATCH.md`);
//! - a late will of a taken-over connection fired the new connection's
//!   will instead: patched there too (wills are per connection).
//!
//! Because an auth hook is set, rumqttd refuses a CONNECT without a
//! username; Baton's clients always send one (their client id).

use std::collections::HashMap;
use std::net::SocketAddr;

use baton_shared::wire::MQTT_MAX_PACKET;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::error;

/// Whether rumqttd may see this client id: 1–128 printable ASCII characters
/// without MQTT wildcards, `$` or `/`.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'+' | b'#' | b'$' | b'/'))
}

/// Connections allowed for `agents` expected agents.
pub fn connection_limit(agents: usize) -> usize {
    agents + agents / 4 + 64
}

fn config(listen: SocketAddr, agents: usize) -> Config {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 30_000,
        max_payload_size: MQTT_MAX_PACKET,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(|client_id: String, _user: String, _pass: String| async move {
        valid_client_id(&client_id)
    });
    let server = ServerSettings {
        name: "baton-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: connection_limit(agents),
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        ..Default::default()
    }
}

/// Starts rumqttd on its own threads, accepting on `listener` (bound by
/// the caller: see `server::Listeners`). Clients may connect at once: the
/// kernel queues them on the bound socket until rumqttd accepts. The broker
/// lives as long as the process.
pub fn start(listener: std::net::TcpListener, agents: usize) -> std::io::Result<()> {
    let listen = listener.local_addr()?;
    let cfg = config(listen, agents);
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = Broker::new(cfg).with_v4_listener("v4", listener);
            if let Err(e) = broker.start() {
                error!(error = %e, "embedded broker stopped");
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_with_wildcards_never_reach_rumqttd() {
        assert!(valid_client_id("pi-s03-c07-a12"));
        assert!(valid_client_id("baton-gateway-gw-1"));
        for bad in ["", "a+b", "a#", "$SYS", "a/b", "a b", "é"] {
            assert!(!valid_client_id(bad), "{bad:?}");
        }
        assert!(!valid_client_id(&"a".repeat(129)));
    }

    #[test]
    fn connection_limit_has_headroom() {
        assert_eq!(connection_limit(0), 64);
        assert_eq!(connection_limit(1000), 1314);
    }
}
