//! The service manager's side channel (systemd `Type=notify`): `READY=1`
//! once a daemon serves, `WATCHDOG=1` from its main loop while it is
//! healthy, `STOPPING=1` on the way out. Without `NOTIFY_SOCKET` (not
//! under systemd) every call is a no-op. Shared by both daemons.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "notifying the service manager failed");
    }
}

/// The daemon serves.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// The daemon is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// The main loop is alive and healthy.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping when the manager set a watchdog (`WatchdogSec=`):
/// half its timeout, so one late ping is not a restart.
pub fn watchdog_every() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|t| t / 2)
}

/// Resolves on SIGTERM (systemd's stop) or Ctrl-C: the shutdown future
/// both daemons' mains hand to their `run`. Library code never installs
/// signal handlers; a main does, through this.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
