//! End-to-end test support for Baton: real brokers, real gateways, and the
//! gateway's test publishers (`baton_gateway::publisher`: a real rumqttc
//! client driving the real `uplink` state machine over an in-memory ledger).

#![allow(clippy::unwrap_used)]

pub mod bins;
pub mod http;
pub mod mosquitto;

use std::time::Duration;

/// Waits for `cond`, polling, up to `limit`; never a fixed sleep.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}
