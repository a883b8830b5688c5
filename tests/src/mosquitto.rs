//! A Mosquitto instance of the test's own, on a free port, configured by
//! the same generator as `baton-gateway print-mosquitto-config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton_gateway::mosquitto::{MosquittoOptions, config};

/// A running broker; killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    pub addr: SocketAddr,
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
        let text = config(&MosquittoOptions {
            listen: addr,
            agents: 100,
            allow_anonymous: true,
        });
        std::fs::write(&conf, text).expect("writing mosquitto.conf");
        let child = spawn(&bin, &conf);
        let m = Mosquitto {
            addr,
            child,
            conf,
            _dir: dir,
        };
        m.wait_listening();
        Some(m)
    }

    fn wait_listening(&self) {
        for _ in 0..500 {
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(50)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("mosquitto did not listen on {}", self.addr);
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
