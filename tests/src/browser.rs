//! A real headless browser for the console's tests: Debian's `chromium`
//! driven through its `chromedriver` over WebDriver (fantoccini), on
//! loopback only, with the flags that keep it from reaching for the
//! network at start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

/// A browser session and the driver process behind it.
#[derive(Debug)]
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn found(env: &str, default: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    p.exists().then_some(p)
}

/// Where the tests write screenshots: `BATON_ARTEFACTS`, else
/// `target/artefacts` of the workspace.
pub fn artefacts() -> PathBuf {
    let dir = std::env::var_os("BATON_ARTEFACTS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artefacts"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("artefacts dir");
    dir
}

impl Browser {
    /// Starts chromedriver and a headless chromium, or `None` (after
    /// saying so) when they are not installed. With
    /// `BATON_REQUIRE_CHROMIUM=1` (CI) a missing browser fails the test.
    pub async fn start() -> Option<Browser> {
        let (Some(driver_bin), Some(chromium)) = (
            found("BATON_CHROMEDRIVER", "/usr/bin/chromedriver"),
            found("BATON_CHROMIUM", "/usr/bin/chromium"),
        ) else {
            assert!(
                std::env::var("BATON_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
                "BATON_REQUIRE_CHROMIUM=1 but chromium or chromedriver is missing (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "SKIPPED: chromium and chromedriver are not installed (set BATON_REQUIRE_CHROMIUM=1 to fail instead)"
            );
            return None;
        };
        let port = crate::daemons::free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        crate::daemons::wait_listening(([127, 0, 0, 1], port).into());
        let profile = tempfile::tempdir().expect("profile dir");
        let args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1300,1000",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium, "args": args }),
        );
        caps.insert(
            "goog:loggingPrefs".into(),
            serde_json::json!({ "browser": "ALL" }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session through chromedriver");
        Some(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Writes a screenshot of the page as `<artefacts>/<name>.png`.
    pub async fn shot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = artefacts().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing a screenshot");
        path
    }

    /// Waits up to `limit` for an element matching `css` whose text
    /// contains `text`; its text, or a panic naming what was missing and
    /// the page's problem banner.
    pub async fn wait_text(&self, css: &str, text: &str, limit: Duration) -> String {
        let started = std::time::Instant::now();
        let mut last = String::new();
        while started.elapsed() < limit {
            if let Ok(el) = self.client.find(Locator::Css(css)).await
                && let Ok(t) = el.text().await
            {
                if t.contains(text) {
                    return t;
                }
                last = t;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let problem = self.problem().await;
        panic!(
            "no {css:?} containing {text:?} after {limit:?}; last text {last:?}; problem banner {problem:?}"
        );
    }

    /// The page's problem banner, when shown.
    pub async fn problem(&self) -> Option<String> {
        let v = self
            .client
            .execute(
                "const p = document.getElementById('problem'); return p && !p.hidden ? p.textContent : null;",
                vec![],
            )
            .await
            .ok()?;
        v.as_str().map(str::to_owned)
    }

    /// What went wrong in the page: its own record of script errors,
    /// unhandled rejections, failed loads and refused content, plus every
    /// console message of level SEVERE the browser logged.
    pub async fn errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self
            .client
            .execute("return window.__batonErrors;", vec![])
            .await
        {
            Ok(serde_json::Value::Array(items)) => {
                out.extend(items.into_iter().map(|v| v.to_string()));
            }
            Ok(other) => out.push(format!("the console's script did not run: {other}")),
            Err(e) => out.push(format!("reading the page's errors: {e}")),
        }
        match self.client.issue_cmd(BrowserLog).await {
            Ok(serde_json::Value::Array(items)) => out.extend(
                items
                    .into_iter()
                    .filter(|m| m.get("level").and_then(|l| l.as_str()) == Some("SEVERE"))
                    .map(|m| m.to_string()),
            ),
            Ok(other) => out.push(format!("the browser's log: {other}")),
            Err(e) => out.push(format!("reading the browser's log: {e}")),
        }
        out
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// chromedriver's read of the browser's console log (since the last
/// read): `POST /session/{id}/se/log {"type": "browser"}`.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}
