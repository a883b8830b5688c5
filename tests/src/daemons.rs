//! In-process daemons for end-to-end tests: a gateway (embedded broker or
//! an external one) and agents, each on real sockets and real redb files.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton_gateway::config::{Broker, Config};
use baton_gateway::server::Bound;
use baton_shared::{AgentId, ClusterId, PublicKey};
use tokio::sync::oneshot;

/// The gateway's key in `dir` (created once) and a keys directory trusting
/// `agents`: (key, key path, keys dir).
fn prepare_gateway_dir(
    dir: &Path,
    agents: &[(AgentId, PublicKey)],
) -> (baton_shared::SecretKey, PathBuf, PathBuf) {
    let key_path = dir.join("gateway.key");
    let key = if key_path.exists() {
        baton_runtime::keys::load(&key_path).unwrap()
    } else {
        baton_runtime::keys::generate(&key_path).unwrap()
    };
    let keys_dir = dir.join("agents");
    std::fs::create_dir_all(&keys_dir).unwrap();
    for (id, k) in agents {
        std::fs::write(keys_dir.join(format!("{id}.pub")), k.to_hex()).unwrap();
    }
    (key, key_path, keys_dir)
}

/// A gateway running in this process.
#[derive(Debug)]
pub struct Gateway {
    pub bound: Bound,
    pub key: PublicKey,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    external: Option<SocketAddr>,
}

impl Gateway {
    /// Starts a gateway in `dir` trusting `agents`; with `external` it uses
    /// that broker, else its own on `listen` (port 0: any free port). A key
    /// already in `dir` is kept (a restart).
    pub async fn start(
        dir: &Path,
        agents: &[(AgentId, PublicKey)],
        external: Option<SocketAddr>,
        listen: SocketAddr,
    ) -> Gateway {
        let broker = match external {
            None => Broker::Embedded { listen },
            Some(a) => Broker::External {
                host: a.ip().to_string(),
                port: a.port(),
                username: None,
                password: None,
                tls: None,
            },
        };
        Gateway::start_broker(dir, agents, broker).await
    }

    /// As [`Gateway::start`] with any broker setting (TLS, credentials).
    pub async fn start_broker(
        dir: &Path,
        agents: &[(AgentId, PublicKey)],
        broker: Broker,
    ) -> Gateway {
        Gateway::start_config(dir, agents, broker, |_| {}).await
    }

    /// A gateway on its embedded broker with `broker_auth = "none"`: anyone
    /// may connect and publish anything (attacks and probes as anyone).
    pub async fn start_open(dir: &Path, agents: &[(AgentId, PublicKey)]) -> Gateway {
        let listen = "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!());
        Gateway::start_config(dir, agents, Broker::Embedded { listen }, |c| {
            c.security.broker_auth = false;
        })
        .await
    }

    /// As [`Gateway::start_broker`], with `adjust` changing the
    /// configuration before the start (security settings, say).
    pub async fn start_config(
        dir: &Path,
        agents: &[(AgentId, PublicKey)],
        broker: Broker,
        adjust: impl FnOnce(&mut Config),
    ) -> Gateway {
        let external = match &broker {
            Broker::External { host, port, .. } => {
                Some(SocketAddr::new(host.parse().unwrap(), *port))
            }
            Broker::Embedded { .. } => None,
        };
        let (key, key_path, keys_dir) = prepare_gateway_dir(dir, agents);
        let mut config = Config {
            id: AgentId::new("gw-e2e").unwrap(),
            cluster: ClusterId::new("c1").unwrap(),
            data_dir: dir.to_owned(),
            key: key_path,
            keys_dir: Some(keys_dir),
            broker,
            http_listen: "127.0.0.1:0".parse().unwrap(),
            resend_timeout: Duration::from_secs(2),
            checkpoint_interval: Duration::from_secs(1),
            max_agents: 100,
            liveness: baton_gateway::config::Liveness {
                summary_interval: Duration::from_secs(1),
                ..Default::default()
            },
            upstream: None,
            security: baton_gateway::config::Security::defaults(dir),
            daily_dir: None,
            archive: None,
            retain_entries: None,
            archive_ca: None,
        };
        adjust(&mut config);
        let token_file = config.security.token_file.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, bound) = oneshot::channel();
        let listeners = baton_gateway::server::Listeners::bind(&config).unwrap();
        let task = tokio::spawn(baton_gateway::run(
            config,
            listeners,
            async move {
                let _ = stopped.await;
            },
            Some(ready),
        ));
        let bound: Bound = tokio::time::timeout(Duration::from_secs(20), bound)
            .await
            .expect("gateway did not start")
            .unwrap();
        crate::http::remember_token(bound.http, token_file);
        Gateway {
            bound,
            key: key.public(),
            stop: Some(stop),
            task,
            external,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.unwrap().unwrap();
    }

    /// The broker agents connect to.
    pub fn mqtt(&self) -> SocketAddr {
        self.bound.mqtt.or(self.external).unwrap()
    }
}

/// An agent running in this process.
#[derive(Debug)]
pub struct Agent {
    pub id: AgentId,
    pub dir: PathBuf,
    pub ready: baton_agent::Ready,
    running: baton_agent::Running,
}

/// Creates a gateway's identity in `dir` (once) and returns its public key
/// (to enroll it somewhere before it starts).
pub fn gateway_key(dir: &Path) -> PublicKey {
    prepare_gateway_dir(dir, &[]).0.public()
}

/// Creates an agent's identity in `dir` (once) and returns its public key.
pub fn agent_key(dir: &Path) -> PublicKey {
    let path = dir.join("agent.key");
    if path.exists() {
        baton_runtime::keys::load(&path).unwrap().public()
    } else {
        baton_runtime::keys::generate(&path).unwrap().public()
    }
}

impl Agent {
    /// Starts agent `id` in `dir` against the broker at `mqtt` (none:
    /// offline), pinning `gateway_key`.
    pub async fn start(
        id: &str,
        dir: &Path,
        mqtt: Option<SocketAddr>,
        gateway_key: Option<PublicKey>,
    ) -> Agent {
        Agent::start_with(
            id,
            dir,
            mqtt,
            gateway_key,
            baton_agent::RawConfig::default(),
        )
        .await
    }

    /// As [`Agent::start`], with `extra` settings (budget, …).
    pub async fn start_with(
        id: &str,
        dir: &Path,
        mqtt: Option<SocketAddr>,
        gateway_key: Option<PublicKey>,
        extra: baton_agent::RawConfig,
    ) -> Agent {
        agent_key(dir);
        let raw = baton_agent::RawConfig {
            id: Some(id.into()),
            cluster: Some("c1".into()),
            data_dir: Some(dir.to_owned()),
            gateway: mqtt.map(|a| format!("mqtt://{a}")),
            gateway_key: gateway_key.map(|k| k.to_hex()),
            resend_timeout: Some("2s".into()),
            ..Default::default()
        };
        let config = baton_agent::Config::validate(raw.merge(extra)).unwrap();
        let running = baton_agent::spawn(config).await.unwrap();
        Agent {
            id: AgentId::new(id).unwrap(),
            dir: dir.to_owned(),
            ready: running.ready.clone(),
            running,
        }
    }

    pub fn head(&self) -> u64 {
        self.ready.writer.head().seq.0
    }

    pub fn receipted(&self) -> u64 {
        self.ready.shared.receipted()
    }

    /// Appends `n` entries through the socket (pipelined); returns the
    /// acknowledged (seq, hash) pairs.
    pub async fn append(&self, from: u64, n: u64) -> Vec<(u64, String)> {
        let lines = sample_lines(from, n);
        let answers = baton_agent::socket::client::send_lines(&self.ready.socket, lines)
            .await
            .unwrap();
        answers.into_iter().map(|a| a.unwrap()).collect()
    }

    /// Appends `n` readings whose data carries `marker-<i>` from `from`
    /// (see [`crate::markers`]); every one must be acknowledged.
    pub async fn append_marked(&self, from: u64, n: u64) {
        let lines: Vec<Vec<u8>> = (from..from + n)
            .map(|i| {
                format!("{{\"event\":\"reading\",\"data\":{{\"m\":\"marker-{i:06}\"}}}}")
                    .into_bytes()
            })
            .collect();
        let answers = baton_agent::socket::client::send_lines(&self.ready.socket, lines)
            .await
            .unwrap();
        assert!(answers.iter().all(Result::is_ok));
    }

    pub async fn stop(self) {
        self.running.stop().await.unwrap();
    }
}

/// `n` append requests with ~200 B of data each, numbered from `from`.
pub fn sample_lines(from: u64, n: u64) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|i| {
            format!(
                "{{\"event\":\"reading\",\"context\":\"e2e\",\"data\":{{\"i\":{i},\"pad\":\"{}\"}}}}",
                "x".repeat(200)
            )
            .into_bytes()
        })
        .collect()
}

// Gateway processes, for faults that need a real process: SIGKILL, and a
// restart of the embedded broker (which lives as long as its process).

/// Where the gateway gets MQTT from.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    /// Its embedded broker, listening here.
    Embedded(SocketAddr),
    /// A Mosquitto listening here.
    External(SocketAddr),
}

impl Via {
    pub fn broker(self) -> SocketAddr {
        match self {
            Via::Embedded(a) | Via::External(a) => a,
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway process's identity and any further `run` flags (an
/// upstream, intervals).
#[derive(Debug, Clone)]
pub struct Role {
    pub id: String,
    pub cluster: String,
    pub extra: Vec<String>,
    /// Environment for the process (libfaketime).
    pub env: Vec<(String, String)>,
}

impl Default for Role {
    fn default() -> Self {
        Role {
            id: "gw-proc".into(),
            cluster: "c1".into(),
            extra: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl Role {
    pub fn new(id: &str, cluster: &str) -> Role {
        Role {
            id: id.into(),
            cluster: cluster.into(),
            extra: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Forward to the parent gateway behind `broker`, trusting `key`.
    pub fn upstream(mut self, broker: SocketAddr, key: PublicKey) -> Role {
        self.extra.extend([
            "--upstream".into(),
            format!("mqtt://{broker}"),
            "--upstream-key".into(),
            key.to_hex(),
        ]);
        self
    }

    pub fn arg(mut self, flag: &str, value: &str) -> Role {
        self.extra.extend([flag.into(), value.into()]);
        self
    }

    /// Sets an environment variable of the process.
    pub fn env(mut self, key: &str, value: &str) -> Role {
        self.env.push((key.into(), value.into()));
        self
    }
}

pub fn spawn_gateway(dir: &Path, via: Via, http: SocketAddr) -> Child {
    spawn_gateway_as(dir, via, http, &Role::default())
}

/// `baton-gateway run` as `role`; its log goes to `<dir>/gateway.log`.
pub fn spawn_gateway_as(dir: &Path, via: Via, http: SocketAddr, role: &Role) -> Child {
    let mut cmd = Command::new(crate::bins::gateway());
    cmd.args([
        "run",
        "--id",
        &role.id,
        "--cluster",
        &role.cluster,
        "--resend-timeout",
        "1s",
    ])
    .arg("--data-dir")
    .arg(dir)
    .arg("--keys-dir")
    .arg(dir.join("agents"))
    .args(&role.extra)
    .envs(role.env.iter().map(|(k, v)| (k, v)));
    match via {
        Via::Embedded(a) => cmd.arg("--mqtt-listen").arg(a.to_string()),
        Via::External(a) => cmd.arg("--broker").arg(format!("mqtt://{a}")),
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .map_or_else(|_| Stdio::null(), Stdio::from);
    cmd.arg("--http-listen")
        .arg(http.to_string())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

pub fn wait_listening(addr: SocketAddr) {
    for _ in 0..500 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("gateway did not listen on {addr}");
}

/// A gateway process (`baton-gateway run`) that a test can kill and
/// restart; killed when dropped.
#[derive(Debug)]
pub struct GatewayProc {
    pub dir: PathBuf,
    pub via: Via,
    pub http: SocketAddr,
    pub key: PublicKey,
    pub role: Role,
    child: Option<Child>,
}

impl GatewayProc {
    /// Starts a gateway in `dir` trusting `agents` (key created once).
    pub fn start(dir: &Path, agents: &[(AgentId, PublicKey)], via: Via) -> GatewayProc {
        GatewayProc::start_as(dir, agents, via, Role::default())
    }

    /// As [`GatewayProc::start`], as `role`.
    pub fn start_as(
        dir: &Path,
        agents: &[(AgentId, PublicKey)],
        via: Via,
        role: Role,
    ) -> GatewayProc {
        let (key, _, _) = prepare_gateway_dir(dir, agents);
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        crate::http::remember_token(http, dir.join("operator.token"));
        let mut g = GatewayProc {
            dir: dir.to_owned(),
            via,
            http,
            key: key.public(),
            role,
            child: None,
        };
        g.restart();
        g
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (the embedded broker dies with it).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills (if running) and starts again on the same ports and files.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn_gateway_as(&self.dir, self.via, self.http, &self.role));
        wait_listening(self.http);
        if let Via::Embedded(a) = self.via {
            wait_listening(a);
        }
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.kill();
    }
}
