//! The profiler and heartbeat (DESIGN.md, Agent): every `heartbeat`
//! interval the agent measures itself — system metrics from sysinfo and the
//! device readers, its impedance profile, its ledger position — and hands
//! the heartbeat to the link (QoS 0, sent only while connected); every
//! `heartbeat_summary` interval the same figures go into the ledger as a
//! `heartbeat_summary` entry, so the history is in the chain without
//! flooding it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_shared::json::{Object, Value};
use baton_shared::wire::{Heartbeat, ImpedanceSample, SystemMetrics};
use baton_shared::{AgentId, Seq};
use tokio::sync::mpsc;
use tracing::warn;

use crate::clock::ClockState;
use crate::device;
use crate::status::Shared;
use crate::writer::Writer;

/// Reads the system metrics; keeps sysinfo's state between samples (CPU
/// usage is the difference of two readings).
#[derive(Debug)]
pub struct Probe {
    /// `None` where sysinfo cannot read this system: figures read as 0.
    sys: Option<sysinfo::System>,
    root: PathBuf,
    model: Option<String>,
    class: String,
}

impl Probe {
    /// `root` is `/` on a device (a fixture tree in tests); `class`
    /// overrides the hint derived from the model.
    pub fn new(root: PathBuf, class: Option<String>) -> Probe {
        let model = device::model(&root);
        let class = class.unwrap_or_else(|| device::class_hint(model.as_deref()).to_owned());
        let mut sys = sysinfo::System::new().ok();
        if let Some(s) = &mut sys {
            s.refresh_cpu_usage();
        }
        Probe {
            sys,
            root,
            model,
            class,
        }
    }

    /// A reading now; `disk_free` is the ledger filesystem's free space.
    pub fn sample(&mut self, disk_free: u64) -> SystemMetrics {
        let (cpu_pct, mem_used_bytes, mem_total_bytes) = match &mut self.sys {
            Some(s) => {
                s.refresh_cpu_usage();
                s.refresh_memory();
                (s.global_cpu_usage(), s.used_memory(), s.total_memory())
            }
            None => (0.0, 0, 0),
        };
        #[allow(clippy::cast_possible_truncation)]
        let load1 = sysinfo::System::load_average().map_or(0.0, |l| l.one as f32);
        SystemMetrics {
            cpu_pct,
            load1,
            mem_used_bytes,
            mem_total_bytes,
            disk_free_bytes: disk_free,
            uptime_s: sysinfo::System::uptime().unwrap_or(0),
            temp_c: device::max_temperature(&self.root),
            throttled: device::throttled(&self.root).map(|t| t.raw),
            gpu_load_pct: device::gpu_load_pct(&self.root),
            model: self.model.clone().unwrap_or_default(),
            class: self.class.clone(),
        }
    }
}

/// The heartbeat's figures as JSON (status.json and `heartbeat_summary`).
pub fn heartbeat_value(hb: &Heartbeat) -> Object {
    // Metrics are small numbers: f32/f64 and u64 below 2^53 are exact.
    #[allow(clippy::cast_precision_loss)]
    let n = |x: f64| Value::Number((x * 100.0).round() / 100.0);
    let opt = |x: Option<f32>| x.map_or(Value::Null, |v| n(f64::from(v)));
    let i = &hb.impedance;
    let mut imp = Object::new();
    imp.insert("latency_p50_ms", n(f64::from(i.latency_p50_ms)));
    imp.insert("processing_p50_ms", n(f64::from(i.processing_p50_ms)));
    imp.insert("queue_depth", Value::from(u64::from(i.queue_depth)));
    imp.insert("jitter", n(f64::from(i.jitter)));
    imp.insert("reliability", n(f64::from(i.reliability)));
    imp.insert("score", Value::from(u64::from(i.score)));
    imp.insert("impedance_ms", n(i.impedance_ms()));
    let s = &hb.system;
    let mut sys = Object::new();
    sys.insert("cpu_pct", n(f64::from(s.cpu_pct)));
    sys.insert("load1", n(f64::from(s.load1)));
    sys.insert("mem_used_bytes", Value::from(s.mem_used_bytes));
    sys.insert("mem_total_bytes", Value::from(s.mem_total_bytes));
    sys.insert("disk_free_bytes", Value::from(s.disk_free_bytes));
    sys.insert("uptime_s", Value::from(s.uptime_s));
    sys.insert("temp_c", opt(s.temp_c));
    sys.insert(
        "throttled",
        s.throttled.map_or(Value::Null, |t| {
            let d = device::Throttled::decode(t);
            let mut o = Object::new();
            o.insert("raw", Value::from(format!("0x{t:x}")));
            o.insert("under_voltage_now", Value::Bool(d.under_voltage_now));
            o.insert("throttled_now", Value::Bool(d.throttled_now));
            o.insert("freq_capped_now", Value::Bool(d.freq_capped_now));
            o.insert("soft_temp_limit_now", Value::Bool(d.soft_temp_limit_now));
            o.insert(
                "under_voltage_since_boot",
                Value::Bool(d.under_voltage_since_boot),
            );
            o.insert("throttled_since_boot", Value::Bool(d.throttled_since_boot));
            Value::Object(o)
        }),
    );
    sys.insert("gpu_load_pct", opt(s.gpu_load_pct));
    sys.insert(
        "model",
        if s.model.is_empty() {
            Value::Null
        } else {
            Value::from(s.model.as_str())
        },
    );
    sys.insert("class", Value::from(s.class.as_str()));
    let mut o = Object::new();
    o.insert("state", Value::from(hb.state.as_str()));
    o.insert("head_seq", Value::from(hb.head_seq.0));
    o.insert("receipted_seq", Value::from(hb.receipted_seq.0));
    o.insert("backlog", Value::from(hb.backlog));
    o.insert("impedance", Value::Object(imp));
    o.insert("system", Value::Object(sys));
    o.insert(
        "clock",
        hb.clock.map_or(Value::Null, |c| {
            #[allow(clippy::cast_precision_loss)]
            let ms = |x: i64| Value::Number(x as f64);
            let mut o = Object::new();
            o.insert("offset_ms", ms(c.offset_ms));
            o.insert("rtt_ms", ms(c.rtt_ms));
            o.insert("synced", Value::Bool(c.synced));
            Value::Object(o)
        }),
    );
    o
}

/// Everything the heartbeat task needs.
#[derive(Debug)]
pub struct Health {
    pub agent: AgentId,
    pub interval: Duration,
    pub summary_every: Duration,
    pub probe: Probe,
    pub writer: Writer,
    pub shared: Arc<Shared>,
    pub clock: Arc<ClockState>,
    pub disk_free: Arc<AtomicU64>,
    pub uplink: bool,
    /// To the link, which publishes while connected (`None`: no uplink).
    pub to_link: Option<mpsc::Sender<Heartbeat>>,
    /// Reported in every heartbeat.
    pub capabilities: Vec<String>,
}

impl Health {
    /// Measures now.
    pub fn heartbeat(&mut self) -> Heartbeat {
        let head = self.writer.head();
        let receipted = self.shared.receipted();
        let now = baton_runtime::unix_ms();
        let state = self.shared.state(&head, self.uplink, now).to_owned();
        let backlog = head.seq.0.saturating_sub(receipted);
        let queued = self.writer.queued() as u64;
        let profile = self.shared.impedance(backlog + queued);
        #[allow(clippy::cast_possible_truncation)]
        let impedance = ImpedanceSample {
            latency_p50_ms: profile.latency_p50_ms as f32,
            processing_p50_ms: profile.processing_p50_ms as f32,
            queue_depth: u32::try_from(profile.queue_depth).unwrap_or(u32::MAX),
            jitter: profile.drift as f32,
            reliability: profile.reliability as f32,
            score: u16::try_from(profile.score).unwrap_or(1000),
        };
        Heartbeat {
            agent: self.agent.clone(),
            sent_ms: now,
            interval_ms: u32::try_from(self.interval.as_millis()).unwrap_or(u32::MAX),
            state,
            head_seq: head.seq,
            receipted_seq: Seq(receipted),
            backlog,
            impedance,
            system: self.probe.sample(self.disk_free.load(Ordering::Relaxed)),
            clock: self.clock.estimate(),
            capabilities: self.capabilities.clone(),
        }
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let mut beat = tokio::time::interval(self.interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut summary = tokio::time::interval(self.summary_every);
        summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first summary after one full period, not at start.
        summary.tick().await;
        let mut beats_since_summary: u64 = 0;
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let hb = self.heartbeat();
                    self.shared.set_heartbeat(Value::Object(heartbeat_value(&hb)), hb.sent_ms);
                    beats_since_summary += 1;
                    if let Some(tx) = &self.to_link {
                        // A busy link skips a beat rather than queueing stale ones.
                        let _ = tx.try_send(hb);
                    }
                }
                _ = summary.tick() => {
                    let hb = self.heartbeat();
                    let mut data = heartbeat_value(&hb);
                    data.insert("heartbeats", Value::from(beats_since_summary));
                    data.insert(
                        "interval_ms",
                        Value::from(u64::try_from(self.summary_every.as_millis()).unwrap_or(u64::MAX)),
                    );
                    beats_since_summary = 0;
                    if let Err(e) = self
                        .writer
                        .runtime(baton_runtime::unix_ms(), "heartbeat_summary", Value::Object(data))
                        .await
                    {
                        warn!(error = %e, "could not record the heartbeat summary");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_fixture_devices_and_this_machine() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/devices");
        let mut pi = Probe::new(fixtures.join("pi4"), None);
        let m = pi.sample(123);
        assert_eq!(m.class, "CLASS_E_LOCAL");
        assert_eq!(m.model, "Raspberry Pi 4 Model B Rev 1.5");
        assert_eq!(m.throttled, Some(0x5_0005));
        assert_eq!(m.disk_free_bytes, 123);
        // system-wide figures come from this machine
        assert!(m.mem_total_bytes > 0 && m.uptime_s > 0);
        let mut orin = Probe::new(fixtures.join("orin"), Some("CLASS_X_TEST".into()));
        let m = orin.sample(0);
        assert_eq!(m.class, "CLASS_X_TEST");
        assert!(m.gpu_load_pct.is_some());
        let mut bare = Probe::new(PathBuf::from("/nonexistent"), None);
        let m = bare.sample(0);
        assert_eq!((m.temp_c, m.throttled, m.gpu_load_pct), (None, None, None));
        assert_eq!(m.class, "CLASS_C_PERSISTENT");
    }
}
