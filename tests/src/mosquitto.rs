//! A Mosquitto instance of the test's own, on a free port, configured by
//! the same generator as `baton-gateway print-mosquitto-config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton_gateway::mosquitto::{Auth, MosquittoOptions, TlsListener, config};

/// A running broker; killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    pub addr: SocketAddr,
    /// With [`Mosquitto::start_tls`]: the TLS listener and the CA file that
    /// signed its certificate (for 127.0.0.1 and localhost).
    pub tls: Option<(SocketAddr, PathBuf)>,
    child: Child,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("mosquitto"))
            .collect::<Vec<_>>()
    });
    on_path
        .chain([PathBuf::from("/usr/sbin/mosquitto")])
        .find(|p| p.is_file())
}

impl Mosquitto {
    /// Starts Mosquitto, or returns `None` (after saying so) when it is not
    /// installed. With `BATON_REQUIRE_MOSQUITTO=1` (CI) a missing broker
    /// fails the test instead.
    pub fn start() -> Option<Mosquitto> {
        Mosquitto::start_with(false, None)
    }

    /// As [`Mosquitto::start`], plus a TLS listener with a certificate from
    /// a CA made for the test.
    pub fn start_tls() -> Option<Mosquitto> {
        Mosquitto::start_with(true, None)
    }

    /// The production setup: TLS for the devices, no anonymous clients,
    /// the password file and topic ACL of `auth` (files the test wrote).
    pub fn start_fleet(auth: &Auth) -> Option<Mosquitto> {
        Mosquitto::start_with(true, Some(auth))
    }

    fn start_with(tls: bool, auth: Option<&Auth>) -> Option<Mosquitto> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var("BATON_REQUIRE_MOSQUITTO").as_deref() != Ok("1"),
                "BATON_REQUIRE_MOSQUITTO=1 but no mosquitto binary was found (apt-get install mosquitto)"
            );
            eprintln!(
                "SKIPPED: mosquitto is not installed (set BATON_REQUIRE_MOSQUITTO=1 to fail instead)"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let conf = dir.path().join("mosquitto.conf");
        let tls = tls.then(|| {
            let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            TlsListener {
                listen: SocketAddr::from(([127, 0, 0, 1], tls_port)),
                cafile: test_certificates(dir.path()),
                certfile: dir.path().join("server.pem"),
                keyfile: dir.path().join("server.key"),
            }
        });
        let text = config(&MosquittoOptions {
            listen: addr,
            tls: tls.clone(),
            agents: 100,
            auth: auth.cloned(),
        });
        let tls = tls.map(|t| (t.listen, t.cafile));
        std::fs::write(&conf, text).expect("writing mosquitto.conf");
        let child = spawn(&bin, &conf);
        let m = Mosquitto {
            addr,
            tls,
            child,
            conf,
            _dir: dir,
        };
        m.wait_listening();
        Some(m)
    }

    fn wait_listening(&self) {
        let addrs = std::iter::once(self.addr).chain(self.tls.as_ref().map(|t| t.0));
        for addr in addrs {
            let up = (0..500).any(|_| {
                let ok =
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok();
                if !ok {
                    std::thread::sleep(Duration::from_millis(10));
                }
                ok
            });
            assert!(up, "mosquitto did not listen on {addr}");
        }
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let bin = binary().expect("mosquitto vanished");
        self.child = spawn(&bin, &self.conf);
        self.wait_listening();
    }
}

fn spawn(bin: &PathBuf, conf: &PathBuf) -> Child {
    Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting mosquitto")
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `ca.pem`, `server.pem` and `server.key` into `dir` (a CA made for
/// the test, and a certificate it signed for 127.0.0.1 and localhost);
/// returns the CA file.
pub fn test_certificates(dir: &std::path::Path) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Baton test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).expect("writing ca.pem");
    std::fs::write(dir.join("server.pem"), cert.pem()).expect("writing server.pem");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("writing server.key");
    ca
}
