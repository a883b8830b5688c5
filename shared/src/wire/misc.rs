//! The small messages: `hb` (heartbeat), `time` / `time/reply` (clock
//! exchange) and `state` (presence, with the MQTT last will).

use serde::{Deserialize, Serialize};

use super::{MAX_OTHER_BYTES, Message};
use crate::entry::Seq;
use crate::id::AgentId;

/// The agent's view of itself and its link, as carried in a heartbeat.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ImpedanceSample {
    pub latency_p50_ms: f32,
    pub processing_p50_ms: f32,
    /// Unreceipted entries plus pending appends.
    pub queue_depth: u32,
    /// RTT jitter (drift coefficient).
    pub jitter: f32,
    /// Receipts received / batches sent over the window, 0..=1.
    pub reliability: f32,
    /// 0 (unusable) ..= 1000 (ideal).
    pub score: u16,
}

impl ImpedanceSample {
    /// Z in ms (see [`crate::impedance`]).
    pub fn impedance_ms(&self) -> f64 {
        crate::impedance::impedance_ms(
            f64::from(self.latency_p50_ms),
            f64::from(self.processing_p50_ms),
            f64::from(self.queue_depth),
            f64::from(self.jitter),
            f64::from(self.reliability),
        )
    }
}

/// System metrics; `None` where the device has no such sensor.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SystemMetrics {
    pub cpu_pct: f32,
    pub load1: f32,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    pub disk_free_bytes: u64,
    pub uptime_s: u64,
    pub temp_c: Option<f32>,
    /// Raspberry Pi `get_throttled` bits.
    pub throttled: Option<u32>,
    pub gpu_load_pct: Option<f32>,
    pub model: String,
    pub class: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub agent: AgentId,
    /// The agent's wall clock, ms since the Unix epoch.
    pub sent_ms: i64,
    pub interval_ms: u32,
    pub state: String,
    pub head_seq: Seq,
    pub receipted_seq: Seq,
    pub backlog: u64,
    pub impedance: ImpedanceSample,
    pub system: SystemMetrics,
    /// The agent's clock estimate (PROTOCOL §7): gateway clock − agent
    /// clock, ms, from the lowest-RTT sample of its window; `None` until a
    /// clock exchange succeeded.
    pub clock: Option<ClockEstimate>,
}

/// The agent's current clock estimate, as its entries' `clock` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClockEstimate {
    pub offset_ms: i64,
    pub rtt_ms: i64,
    pub synced: bool,
}

impl Message for Heartbeat {
    const LIMIT: usize = MAX_OTHER_BYTES;
}

/// `time` (agent → gateway, QoS 0): `t0` is the agent's clock at send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRequest {
    pub agent: AgentId,
    pub id: [u8; 8],
    pub t0: i64,
}

impl Message for TimeRequest {
    const LIMIT: usize = MAX_OTHER_BYTES;
}

/// `time/reply` (gateway → agent, QoS 0): the gateway's receive (`t1`) and
/// send (`t2`) times for request `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeReply {
    pub agent: AgentId,
    pub id: [u8; 8],
    pub t0: i64,
    pub t1: i64,
    pub t2: i64,
}

impl Message for TimeReply {
    const LIMIT: usize = MAX_OTHER_BYTES;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceState {
    Online,
    Offline,
}

/// `state` (agent → gateway, QoS 1, retained): `online` on connect and the
/// same session's `offline` as the last will; `connect_ms` tells sessions
/// apart, so an `offline` older than the latest `online` is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMsg {
    pub agent: AgentId,
    pub state: PresenceState,
    pub connect_ms: i64,
}

impl Message for StateMsg {
    const LIMIT: usize = MAX_OTHER_BYTES;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::check_framing;

    #[test]
    fn framing() {
        let agent = AgentId::new("pi-1").unwrap();
        check_framing(&Heartbeat {
            agent: agent.clone(),
            sent_ms: 1_700_000_000_000,
            interval_ms: 5000,
            state: "idle".into(),
            head_seq: Seq(10),
            receipted_seq: Seq(8),
            backlog: 2,
            impedance: ImpedanceSample {
                latency_p50_ms: 12.5,
                score: 900,
                ..Default::default()
            },
            system: SystemMetrics {
                temp_c: Some(61.5),
                model: "Raspberry Pi 4 Model B Rev 1.5".into(),
                ..Default::default()
            },
            clock: Some(ClockEstimate {
                offset_ms: -40_000_000_000,
                rtt_ms: 3,
                synced: true,
            }),
        });
        check_framing(&TimeRequest {
            agent: agent.clone(),
            id: [1; 8],
            t0: -5,
        });
        check_framing(&TimeReply {
            agent: agent.clone(),
            id: [1; 8],
            t0: 1,
            t1: 2,
            t2: 3,
        });
        check_framing(&StateMsg {
            agent,
            state: PresenceState::Offline,
            connect_ms: 99,
        });
    }
}
