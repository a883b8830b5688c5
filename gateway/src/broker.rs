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
//!
//! **Who may connect, and do what** ([`Authority`]): a device logs in as
//! itself — user name = client id = agent id, password = a fresh signature
//! by its enrolled key (`baton_shared::login`) — and is then held per
//! packet to `baton_shared::acl`: its own topics, in the protocol's
//! direction, retained only on its own small `state`. A child gateway's
//! forwarder (`baton-forwarder-<id>`) logs in with its gateway key and may
//! forward its own cluster's chains. The gateway's own client logs in with
//! a secret made at start. Everything else is refused and counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};

use baton_shared::acl::{Access, Principal};
use baton_shared::login::{Login, LoginError};
use baton_shared::wire::MQTT_MAX_PACKET;
use baton_shared::{AgentId, ClusterId, PublicKey};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use subtle::ConstantTimeEq;
use tracing::{error, warn};

use crate::metrics::Metrics;
use crate::store::{AgentRecord, EnrolledBy};

/// The client id of a child gateway's forwarder on its parent's broker.
pub fn forwarder_client_id(gateway: &AgentId) -> String {
    format!("{FORWARDER_PREFIX}{gateway}")
}

const FORWARDER_PREFIX: &str = "baton-forwarder-";

/// Looks up an enrolled record (the gateway's store).
pub type Lookup = Box<dyn Fn(&AgentId) -> Option<AgentRecord> + Send + Sync>;
/// Whether a trust-on-first-use window is open at `unix_ms`.
pub type WindowOpen = Box<dyn Fn(i64) -> bool + Send + Sync>;

/// Authentication and the topic ACL of the embedded broker.
pub struct Authority {
    cluster: ClusterId,
    gateway_client: String,
    gateway_secret: String,
    lookup: Lookup,
    window_open: WindowOpen,
    /// Who each authenticated client id is (set at its last login).
    principals: RwLock<HashMap<String, Principal>>,
    /// The counter of each id's last accepted login: a replay is refused.
    /// Kept in memory: after a restart a login captured before it could
    /// be used once (RELIABILITY.md).
    last_login: Mutex<HashMap<String, i64>>,
    /// Ids not enrolled that logged in inside a window, at most
    /// `strangers_cap` of them: what an open window lets strangers make
    /// this broker remember is bounded too.
    strangers: Mutex<std::collections::HashSet<String>>,
    strangers_cap: usize,
    metrics: Arc<Metrics>,
    /// When a refusal was last logged (at most one line a second).
    logged_at: Mutex<i64>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("cluster", &self.cluster)
            .field("gateway_client", &self.gateway_client)
            .finish_non_exhaustive()
    }
}

/// Why a CONNECT was refused (logged, counted).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("user name {username:?} is not the client id")]
    NotItself { username: String },
    #[error("wrong secret for the gateway's own client")]
    GatewaySecret,
    #[error("{0}")]
    Login(#[from] LoginError),
    #[error("{id} is a child gateway of cluster {cluster}'s chains only through its forwarder")]
    NotADevice { id: AgentId, cluster: ClusterId },
    #[error("{0:?} is not a valid id")]
    BadId(String),
    #[error("the offered key is not a usable Ed25519 key")]
    BadKey,
    #[error("this window's first-use logins are used up ({0})")]
    TooManyStrangers(usize),
}

impl Authority {
    pub fn new(
        cluster: ClusterId,
        gateway_client: String,
        gateway_secret: String,
        lookup: Lookup,
        window_open: WindowOpen,
        strangers_cap: usize,
        metrics: Arc<Metrics>,
    ) -> Authority {
        Authority {
            cluster,
            gateway_client,
            gateway_secret,
            lookup,
            window_open,
            principals: RwLock::new(HashMap::new()),
            last_login: Mutex::new(HashMap::new()),
            strangers: Mutex::new(std::collections::HashSet::new()),
            strangers_cap,
            metrics,
            logged_at: Mutex::new(i64::MIN),
        }
    }

    /// Judges a CONNECT at `now_ms`; on success the client's principal is
    /// kept for [`Authority::allows`].
    pub fn authenticate(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
        now_ms: i64,
    ) -> Result<Principal, Refused> {
        if username != client_id {
            return Err(Refused::NotItself {
                username: username.to_owned(),
            });
        }
        let principal = if client_id == self.gateway_client {
            let same: bool = password
                .as_bytes()
                .ct_eq(self.gateway_secret.as_bytes())
                .into();
            if !same {
                return Err(Refused::GatewaySecret);
            }
            Principal::Gateway
        } else {
            self.login(client_id, password, now_ms)?
        };
        self.principals
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(client_id.to_owned(), principal.clone());
        Ok(principal)
    }

    fn login(&self, client_id: &str, password: &str, now_ms: i64) -> Result<Principal, Refused> {
        let login = Login::parse(password)?;
        let (id, forwarder) = match client_id.strip_prefix(FORWARDER_PREFIX) {
            Some(gw) => (gw, true),
            None => (client_id, false),
        };
        let id = AgentId::new(id).map_err(|_| Refused::BadId(client_id.to_owned()))?;
        let record = (self.lookup)(&id);
        let (key, principal) = match (&record, forwarder) {
            (
                Some(AgentRecord {
                    public_key,
                    enrolled_by: EnrolledBy::ChildGateway { cluster },
                    ..
                }),
                true,
            ) => (
                *public_key,
                Principal::Child {
                    cluster: cluster.clone(),
                },
            ),
            (Some(r), false) => {
                if let EnrolledBy::ChildGateway { cluster } | EnrolledBy::Vouched { cluster, .. } =
                    &r.enrolled_by
                {
                    return Err(Refused::NotADevice {
                        id,
                        cluster: cluster.clone(),
                    });
                }
                (r.public_key, self.device(&id))
            }
            // Not enrolled: only inside a window, under the key it offers
            // (the hello then enrolls that id, within the window's bounds).
            (None, false) if (self.window_open)(now_ms) => {
                let key = login.offered_key.ok_or(LoginError::Unknown)?;
                let mut strangers = self
                    .strangers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if strangers.len() >= self.strangers_cap && !strangers.contains(client_id) {
                    return Err(Refused::TooManyStrangers(self.strangers_cap));
                }
                strangers.insert(client_id.to_owned());
                (key, self.device(&id))
            }
            _ => return Err(LoginError::Unknown.into()),
        };
        let key = PublicKey::trusted(&key).map_err(|_| Refused::BadKey)?;
        let mut last = self
            .last_login
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        login.verify(client_id, &key, last.get(client_id).copied())?;
        last.insert(client_id.to_owned(), login.counter);
        Ok(principal)
    }

    fn device(&self, agent: &AgentId) -> Principal {
        Principal::Device {
            cluster: self.cluster.clone(),
            agent: agent.clone(),
        }
    }

    /// The per-packet ACL: what `client_id`'s principal may do.
    pub fn allows(&self, client_id: &str, access: Access<'_>) -> bool {
        let verdict = self
            .principals
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(client_id)
            .map(|p| p.allows(access));
        match verdict {
            Some(Ok(())) => true,
            denied => {
                let counter = match access {
                    Access::Publish { .. } => &self.metrics.broker_publishes_denied,
                    Access::Subscribe { .. } => &self.metrics.broker_subscribes_denied,
                };
                counter.fetch_add(1, Relaxed);
                if self.log_due() {
                    let why = denied
                        .and_then(Result::err)
                        .map_or("unauthenticated", |d| d.as_str());
                    warn!(client_id, ?access, why, "broker ACL denied");
                }
                false
            }
        }
    }

    /// The auth hook: judges, counts and logs.
    pub fn connect(&self, client_id: &str, username: &str, password: &str) -> bool {
        if !valid_client_id(client_id) {
            self.metrics.broker_logins_refused.fetch_add(1, Relaxed);
            return false;
        }
        match self.authenticate(client_id, username, password, baton_runtime::unix_ms()) {
            Ok(_) => true,
            Err(e) => {
                self.metrics.broker_logins_refused.fetch_add(1, Relaxed);
                if self.log_due() {
                    warn!(client_id, error = %e, "broker login refused");
                }
                false
            }
        }
    }

    fn log_due(&self) -> bool {
        let now = baton_runtime::unix_ms();
        let mut at = self
            .logged_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = now.saturating_sub(*at) >= 1000;
        if due {
            *at = now;
        }
        due
    }
}

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

fn config(listen: SocketAddr, agents: usize, authority: Option<Arc<Authority>>) -> Config {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 30_000,
        max_payload_size: MQTT_MAX_PACKET,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
        acl: None,
    };
    match authority {
        Some(a) => {
            let acl = Arc::clone(&a);
            connections.acl = Some(Arc::new(
                move |client_id: &str, access: rumqttd::Access<'_>| {
                    acl.allows(client_id, from_rumqttd(access))
                },
            ));
            connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
                let ok = a.connect(&client_id, &user, &pass);
                async move { ok }
            });
        }
        None => {
            connections.set_auth_handler(
                |client_id: String, _user: String, _pass: String| async move {
                    valid_client_id(&client_id)
                },
            );
        }
    }
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

fn from_rumqttd(access: rumqttd::Access<'_>) -> Access<'_> {
    match access {
        rumqttd::Access::Publish { topic, retain, len } => Access::Publish { topic, retain, len },
        rumqttd::Access::Subscribe { filter } => Access::Subscribe { filter },
    }
}

/// Starts rumqttd on its own threads, accepting on `listener` (bound by
/// the caller: see `server::Listeners`). Clients may connect at once: the
/// kernel queues them on the bound socket until rumqttd accepts. The broker
/// lives as long as the process. Without an `authority` anyone may connect
/// and publish anything (`broker_auth = "none"`).
pub fn start(
    listener: std::net::TcpListener,
    agents: usize,
    authority: Option<Arc<Authority>>,
) -> std::io::Result<()> {
    let listen = listener.local_addr()?;
    let cfg = config(listen, agents, authority);
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
    use baton_shared::login::password;
    use baton_shared::{SecretKey, topic};

    fn record(key: &SecretKey, enrolled_by: EnrolledBy) -> AgentRecord {
        AgentRecord {
            public_key: key.public().to_bytes(),
            start_seq: None,
            revoked_from_seq: None,
            enrolled_by,
            enrolled_ms: 0,
        }
    }

    /// pi-1 enrolled, gw-7 a child gateway of c7; a window open or not.
    fn authority(window: bool, device: &SecretKey, child: &SecretKey) -> Authority {
        let pi1 = record(device, EnrolledBy::Operator);
        let cluster = ClusterId::new("c7").unwrap();
        let gw7 = record(child, EnrolledBy::ChildGateway { cluster });
        Authority::new(
            ClusterId::new("c1").unwrap(),
            "baton-gateway-gw".into(),
            "s3cret".into(),
            Box::new(move |a| match a.as_str() {
                "pi-1" => Some(pi1.clone()),
                "gw-7" => Some(gw7.clone()),
                _ => None,
            }),
            Box::new(move |_| window),
            2,
            Arc::new(Metrics::default()),
        )
    }

    #[test]
    fn each_client_logs_in_as_what_it_is_enrolled_as_and_nothing_else() {
        let (device, child) = (
            SecretKey::from_seed(&[1; 32]),
            SecretKey::from_seed(&[2; 32]),
        );
        let a = authority(false, &device, &child);
        let login =
            |id: &str, key: &SecretKey, n| a.authenticate(id, id, &password(key, id, n, false), 0);
        assert_eq!(
            login("pi-1", &device, 5).unwrap(),
            Principal::Device {
                cluster: ClusterId::new("c1").unwrap(),
                agent: AgentId::new("pi-1").unwrap()
            }
        );
        assert!(matches!(
            login("pi-1", &device, 5),
            Err(Refused::Login(LoginError::Replayed { .. }))
        ));
        assert!(matches!(
            login("pi-1", &child, 6),
            Err(Refused::Login(LoginError::BadSignature))
        ));
        // a child gateway only through its forwarder, under its own key
        let fwd = forwarder_client_id(&AgentId::new("gw-7").unwrap());
        assert_eq!(
            login(&fwd, &child, 1).unwrap(),
            Principal::Child {
                cluster: ClusterId::new("c7").unwrap()
            }
        );
        assert!(matches!(
            login("gw-7", &child, 2),
            Err(Refused::NotADevice { .. })
        ));
        // the gateway's own client by its secret only
        assert_eq!(
            a.authenticate("baton-gateway-gw", "baton-gateway-gw", "s3cret", 0)
                .unwrap(),
            Principal::Gateway
        );
        assert!(
            a.authenticate("baton-gateway-gw", "baton-gateway-gw", "guess", 0)
                .is_err()
        );
        assert!(
            a.authenticate("pi-1", "pi-2", &password(&device, "pi-1", 9, false), 0)
                .is_err()
        );
        // strangers: never without a window
        let stranger = SecretKey::from_seed(&[3; 32]);
        let offered = password(&stranger, "pi-9", 1, true);
        assert!(a.authenticate("pi-9", "pi-9", &offered, 0).is_err());
        // and the ACL follows the principal
        let own = topic::agent("c1", "pi-1", topic::Kind::Hb);
        let other = topic::agent("c1", "pi-2", topic::Kind::Hb);
        let publish = |topic| Access::Publish {
            topic,
            retain: false,
            len: 1,
        };
        assert!(a.allows("pi-1", publish(&own)));
        assert!(!a.allows("pi-1", publish(&other)));
        assert!(!a.allows("never-logged-in", publish(&own)));
    }

    #[test]
    fn a_window_admits_a_bounded_number_of_strangers_under_the_key_they_offer() {
        let (device, child) = (
            SecretKey::from_seed(&[1; 32]),
            SecretKey::from_seed(&[2; 32]),
        );
        let a = authority(true, &device, &child);
        let stranger = |i: u8| {
            let key = SecretKey::from_seed(&[10 + i; 32]);
            let id = format!("pi-new-{i}");
            (
                a.authenticate(&id, &id, &password(&key, &id, 1, true), 0),
                id,
                key,
            )
        };
        assert!(stranger(0).0.is_ok());
        let (second, id, key) = stranger(1);
        assert!(second.is_ok());
        assert!(matches!(stranger(2).0, Err(Refused::TooManyStrangers(2))));
        // one already admitted may log in again
        assert!(
            a.authenticate(&id, &id, &password(&key, &id, 2, true), 0)
                .is_ok()
        );
        // without the key offered, a stranger cannot be checked at all
        let bare = password(&key, "pi-new-5", 1, false);
        assert!(a.authenticate("pi-new-5", "pi-new-5", &bare, 0).is_err());
    }

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
