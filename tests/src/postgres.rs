//! A throwaway PostgreSQL server of the test's own: a cluster made by
//! `initdb` in a temporary directory, on a free port on 127.0.0.1, trust
//! authentication for its one user `baton`. Run as the `postgres` user
//! when the tests run as root (the server refuses root). Stopped and
//! started again on the same files and port; killed on drop.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running (or stopped) server.
#[derive(Debug)]
pub struct Postgres {
    /// `postgres://baton@127.0.0.1:PORT/baton`
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// `Some((uid, gid))` when run as another user than the tests'.
    user: Option<(u32, u32)>,
    child: Option<Child>,
    /// The certificates' directory when it serves TLS.
    tls: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

/// The newest installed server's `bin/` (Debian: /usr/lib/postgresql/N/bin).
fn bin_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("BATON_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn ids_of(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

impl Postgres {
    /// Makes and starts a cluster, or returns `None` (after saying so) when
    /// PostgreSQL is not installed. With `BATON_REQUIRE_POSTGRES=1` (CI) a
    /// missing server fails the test instead.
    pub fn start() -> Option<Postgres> {
        Postgres::make(false)
    }

    /// As [`Postgres::start`], serving TLS too (`ssl = on`) under a
    /// certificate for 127.0.0.1 and localhost that a CA made for the test
    /// signed; returns the CA file too.
    pub fn start_tls() -> Option<(Postgres, PathBuf)> {
        let pg = Postgres::make(true)?;
        let ca = pg.tls.as_ref().map(|d| d.join("ca.pem"))?;
        Some((pg, ca))
    }

    fn make(tls: bool) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var("BATON_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "BATON_REQUIRE_POSTGRES=1 but no PostgreSQL server was found (apt-get install postgresql)"
            );
            eprintln!(
                "SKIPPED: PostgreSQL is not installed (set BATON_REQUIRE_POSTGRES=1 to fail instead)"
            );
            return None;
        };
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let user = if root {
            Some(
                ids_of("postgres")
                    .or_else(|| ids_of("nobody"))
                    .expect("a user to run PostgreSQL as"),
            )
        } else {
            None
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let port = crate::daemons::free_port();
        let tls = tls.then(|| {
            let certs = dir.path().join("certs");
            std::fs::create_dir(&certs).unwrap();
            crate::mosquitto::test_certificates(&certs);
            // the server reads its key only when no one else may
            let key = certs.join("server.key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            if let Some((uid, gid)) = user {
                for f in ["server.key", "server.pem", "ca.pem"] {
                    std::os::unix::fs::chown(certs.join(f), Some(uid), Some(gid)).unwrap();
                }
                std::os::unix::fs::chown(&certs, Some(uid), Some(gid)).unwrap();
            }
            certs
        });
        let mut pg = Postgres {
            tls,
            url: format!("postgres://baton@127.0.0.1:{port}/baton"),
            bin,
            data,
            port,
            user,
            child: None,
            _dir: dir,
        };
        let status = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", "baton", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        pg.run();
        let status = pg
            .command("createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "baton",
                "baton",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "createdb failed");
        Some(pg)
    }

    /// One of the server's programs, as the user the server runs as.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// Starts the server on the cluster's files and waits until it answers.
    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.data.display()))
            // the tests measure Baton, not the disk
            .args(["-c", "fsync=off"])
            .args(self.tls.iter().flat_map(|d| {
                [
                    "-c".to_owned(),
                    "ssl=on".to_owned(),
                    "-c".to_owned(),
                    format!("ssl_cert_file={}", d.join("server.pem").display()),
                    "-c".to_owned(),
                    format!("ssl_key_file={}", d.join("server.key").display()),
                ]
            }))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..600 {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(self.log_path()).unwrap_or_default()
        );
    }

    fn log_path(&self) -> PathBuf {
        self.data
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .join("postgres.log")
    }

    /// A fast shutdown (SIGINT: sessions cut, nothing lost).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same files and port.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Runs `sql` with psql: `Ok(output)` (unaligned, tuples only) or
    /// `Err(the error)`.
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                &self.url,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
