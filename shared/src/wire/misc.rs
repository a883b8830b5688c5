//! The small messages: `hb` (heartbeat), `time` / `time/reply` (clock
//! exchange) and `state` (presence, with the MQTT last will).

use serde::{Deserialize, Serialize};

use super::{MAX_OTHER_BYTES, Message};
use crate::crypto::{PublicKey, SecretKey, Sig};
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
    /// What the device can do (its configuration), for commands'
    /// `select.capabilities` (PROTOCOL §9).
    pub capabilities: Vec<String>,
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
/// send (`t2`) times for request `id`, signed by the gateway over
/// [`crate::crypto::time_message`]. An agent drops a reply that does not
/// verify under its pinned gateway key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeReply {
    pub gateway: AgentId,
    pub agent: AgentId,
    pub id: [u8; 8],
    pub t0: i64,
    pub t1: i64,
    pub t2: i64,
    pub sig: Sig,
}

impl TimeReply {
    /// The signed answer of `gateway` to `req`.
    pub fn sign(key: &SecretKey, gateway: &AgentId, req: &TimeRequest, t1: i64, t2: i64) -> Self {
        let m = crate::crypto::time_message(gateway, &req.agent, &req.id, req.t0, t1, t2);
        TimeReply {
            gateway: gateway.clone(),
            agent: req.agent.clone(),
            id: req.id,
            t0: req.t0,
            t1,
            t2,
            sig: key.sign(&m),
        }
    }

    /// Whether `key` signed exactly these times for this request.
    pub fn verify(&self, key: &PublicKey) -> bool {
        let m = crate::crypto::time_message(
            &self.gateway,
            &self.agent,
            &self.id,
            self.t0,
            self.t1,
            self.t2,
        );
        key.verify(&m, &self.sig)
    }
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
            capabilities: vec!["camera".into()],
        });
        check_framing(&TimeRequest {
            agent: agent.clone(),
            id: [1; 8],
            t0: -5,
        });
        let key = SecretKey::from_seed(&[7; 32]);
        let request = TimeRequest {
            agent: agent.clone(),
            id: [1; 8],
            t0: 1,
        };
        let gateway = AgentId::new("gw-1").unwrap();
        check_framing(&TimeReply::sign(&key, &gateway, &request, 2, 3));
        check_framing(&StateMsg {
            agent,
            state: PresenceState::Offline,
            connect_ms: 99,
        });
    }

    /// PROTOCOL §7: a clock reply is signed over every field that moves the
    /// agent's clock; another key, another request or another time fails.
    #[test]
    fn clock_replies_are_signed_over_every_time() {
        let key = SecretKey::from_seed(&[7; 32]);
        let gateway = AgentId::new("gw-1").unwrap();
        let request = TimeRequest {
            agent: AgentId::new("pi-1").unwrap(),
            id: [9; 8],
            t0: -1_000,
        };
        let r = TimeReply::sign(
            &key,
            &gateway,
            &request,
            1_700_000_000_000,
            1_700_000_000_002,
        );
        assert!(r.verify(&key.public()));
        assert!(!r.verify(&SecretKey::from_seed(&[8; 32]).public()));
        let altered = [
            TimeReply {
                t0: r.t0 + 1,
                ..r.clone()
            },
            TimeReply {
                t1: r.t1 - 5_000,
                ..r.clone()
            },
            TimeReply {
                t2: r.t2 + 1,
                ..r.clone()
            },
            TimeReply {
                id: [0; 8],
                ..r.clone()
            },
            TimeReply {
                agent: AgentId::new("pi-2").unwrap(),
                ..r.clone()
            },
            TimeReply {
                gateway: AgentId::new("gw-2").unwrap(),
                ..r.clone()
            },
        ];
        for a in altered {
            assert!(!a.verify(&key.public()), "{a:?}");
        }
        // the message is the contract's, byte for byte
        let m = crate::crypto::time_message(&gateway, &request.agent, &request.id, -1, 2, 3);
        let mut want = b"baton.time.v1\0gw-1\0pi-1\0".to_vec();
        want.extend_from_slice(&[9; 8]);
        want.extend_from_slice(&[0xff; 8]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(m, want);
    }
}
