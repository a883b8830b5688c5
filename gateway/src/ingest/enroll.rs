//! Enrollment: operator enrollments, their withdrawal, fork resolution,
//! and trust on first use inside an operator-opened, bounded window. Each
//! is staged with the group and lands (or fails) with it in
//! `Ingest::commit`, the one commit point.

use super::*;

/// Where the window's end is kept in the store's meta table.
pub(super) const WINDOW_KEY: &str = "enroll_window_until_ms";

/// Trust on first use so far (bounded by `FirstUseLimits`).
#[derive(Debug, Default)]
pub struct FirstUse {
    /// Enrolled in the window now open.
    in_window: u64,
    /// The minute (unix_ms / 60 000) and what was enrolled in it.
    minute: i64,
    in_minute: u32,
    /// Refused since the last log line, and when that was.
    refused: u64,
    logged_minute: i64,
}

impl FirstUse {
    /// Whether one more enrollment at `unix_ms` stays within `limits`;
    /// counts it if so.
    fn admit(
        &mut self,
        unix_ms: i64,
        limits: &crate::config::FirstUseLimits,
    ) -> Result<(), &'static str> {
        let minute = unix_ms.div_euclid(60_000);
        if minute != self.minute {
            self.minute = minute;
            self.in_minute = 0;
        }
        if self.in_window >= limits.max_agents {
            return Err("the window's enrollments are used up (enroll_window_agents)");
        }
        if self.in_minute >= limits.per_minute {
            return Err("too many enrollments this minute (enroll_rate)");
        }
        self.in_window += 1;
        self.in_minute += 1;
        Ok(())
    }
}

impl Ingest {
    /// Whether an enrollment window is open at `unix_ms`.
    pub fn window_open(&self, unix_ms: i64) -> bool {
        self.window_until_ms.is_some_and(|until| unix_ms < until)
    }

    /// Trust on first use, only inside an operator-opened window: the first
    /// key seen for an id is enrolled; later keys meet that record.
    pub(super) fn enroll_on_first_use(
        &mut self,
        now: Duration,
        unix_ms: i64,
        hello: &Hello,
    ) -> bool {
        if !self.window_open(unix_ms) {
            return false;
        }
        if let Err(why) = self.first_use.admit(unix_ms, &self.cfg.first_use) {
            self.metrics
                .first_use_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let f = &mut self.first_use;
            f.refused += 1;
            let minute = unix_ms.div_euclid(60_000);
            if minute != f.logged_minute {
                f.logged_minute = minute;
                warn!(
                    refused = f.refused,
                    why, "trust on first use refused hellos"
                );
                f.refused = 0;
            }
            return false;
        }
        let Ok(key) = PublicKey::trusted(&hello.public_key) else {
            self.bad(
                now,
                hello.agent.as_str(),
                BadInput::UnknownAgent,
                "small-order key refused",
            );
            return false;
        };
        info!(agent = %hello.agent, key = %key, "enrolled on first use");
        self.stage_enrollment(
            unix_ms,
            &hello.agent,
            AgentRecord {
                public_key: key.to_bytes(),
                start_seq: None,
                revoked_from_seq: None,
                enrolled_by: EnrolledBy::TrustOnFirstUse,
                enrolled_ms: unix_ms,
            },
        );
        // No commit here: the intake reads the staged record, and the
        // enrollment lands (or fails) with the group in `commit()`, the
        // one commit point.
        true
    }

    /// Stages an enrollment and its `enroll` entry in the gateway's chain.
    /// A child gateway or an agent behind one is enrolled with the cluster
    /// its chain arrives on; it sends no heartbeats here.
    pub fn stage_enrollment(&mut self, unix_ms: i64, agent: &AgentId, record: AgentRecord) {
        let forwarded = self.route(agent, &record.enrolled_by);
        let cluster = self.cluster_of(agent).clone();
        let mut data = own_chain::enroll_data(
            agent,
            &record.public_key,
            cluster.as_str(),
            record.start_seq,
            record.revoked_from_seq,
        );
        // How the trust came about: operator (whose `operator` entry beside
        // it names the channel and credential), key-file, first-use, a
        // child gateway, or a child's vouch.
        if let baton_shared::json::Value::Object(o) = &mut data {
            o.insert(
                "by",
                baton_shared::json::Value::from(record.enrolled_by.describe()),
            );
        }
        self.staged_records.insert(agent.clone(), record.clone());
        self.staged.push(Write::Enroll {
            agent: agent.clone(),
            record,
        });
        self.stage_own(unix_ms, OwnEvent::Enroll, data);
        self.intakes.remove(agent);
        if !forwarded {
            self.registry().enroll(agent, unix_ms, false);
        }
    }

    /// Opens (or closes, with `None`) the trust-on-first-use window.
    pub fn set_window(&mut self, until_ms: Option<i64>) -> Result<(), StoreError> {
        self.store
            .set_meta(WINDOW_KEY, &until_ms.unwrap_or(i64::MIN).to_be_bytes())?;
        self.window_until_ms = until_ms;
        self.first_use.in_window = 0;
        Ok(())
    }

    /// Opens a window of `length` from `unix_ms` (the caller checked it
    /// against `enroll_window_max`); returns its end.
    pub fn open_window(&mut self, unix_ms: i64, length: Duration) -> Result<i64, StoreError> {
        let ms = i64::try_from(length.as_millis()).unwrap_or(i64::MAX);
        let until = unix_ms.saturating_add(ms);
        self.set_window(Some(until))?;
        Ok(until)
    }

    /// The bounds of trust on first use.
    pub fn first_use_limits(&self) -> &crate::config::FirstUseLimits {
        &self.cfg.first_use
    }

    /// Withdraws trust in `agent`: its record goes with the group, its
    /// intake and liveness now. Its stored chain stays.
    pub fn unenroll(&mut self, agent: &AgentId) -> Result<(), UnenrollError> {
        if *agent == self.cfg.gateway {
            return Err(UnenrollError::OwnChain);
        }
        if self.record(agent)?.is_none() {
            return Err(UnenrollError::NotEnrolled);
        }
        self.staged.push(Write::Unenroll {
            agent: agent.clone(),
        });
        self.staged_records.remove(agent);
        self.intakes.remove(agent);
        self.routes.remove(agent);
        self.children.retain(|_, gw| gw != agent);
        self.registry().remove(agent);
        info!(%agent, "unenrolled");
        Ok(())
    }

    /// Lifts `agent`'s fork halt (with the group); the seq it was halted
    /// at, if it was.
    pub fn resolve(&mut self, agent: &AgentId) -> Result<Option<Seq>, StoreError> {
        let Some(intake) = self.intake(agent)? else {
            return Ok(None);
        };
        let halted = intake.halted();
        if halted.is_some() {
            intake.resolve();
            self.staged.push(Write::Resolve {
                agent: agent.clone(),
            });
            info!(%agent, "fork halt lifted");
        }
        Ok(halted)
    }

    /// Stages an `operator` entry (what an operator did) in the gateway's
    /// chain, committed with the action.
    pub fn stage_operator(&mut self, unix_ms: i64, data: baton_shared::json::Value) {
        self.stage_own(unix_ms, OwnEvent::Operator, data);
    }
}

/// Why an unenroll was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnenrollError {
    #[error("not enrolled")]
    NotEnrolled,
    #[error("the gateway's own chain cannot be unenrolled")]
    OwnChain,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The end of the enrollment window kept in `store`, if one was opened.
pub fn window_until(store: &Store) -> Result<Option<i64>, StoreError> {
    Ok(store
        .meta(WINDOW_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(i64::from_be_bytes))
}

/// Opens the enrollment window in a stopped gateway's store.
pub fn open_window(store: &Store, until_ms: i64) -> Result<(), StoreError> {
    store.set_meta(WINDOW_KEY, &until_ms.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_use_is_bounded_per_window_and_per_minute() {
        let limits = crate::config::FirstUseLimits {
            max_window: Duration::from_secs(600),
            max_agents: 5,
            per_minute: 2,
        };
        let mut f = FirstUse::default();
        let minute = 1_800_000_000_000 / 60_000 * 60_000;
        assert!(f.admit(minute, &limits).is_ok());
        assert!(f.admit(minute + 1, &limits).is_ok());
        assert!(f.admit(minute + 2, &limits).is_err(), "third in a minute");
        assert!(f.admit(minute + 60_000, &limits).is_ok(), "a new minute");
        assert!(f.admit(minute + 60_001, &limits).is_ok());
        assert!(f.admit(minute + 120_000, &limits).is_ok());
        assert!(
            f.admit(minute + 180_000, &limits).is_err(),
            "the window's five are used up"
        );
    }
}
