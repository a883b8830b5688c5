//! Enrollment: operator enrollments and trust on first use inside an
//! operator-opened window. An enrollment is staged with the group and
//! lands (or fails) with it in `Ingest::commit`, the one commit point.

use super::*;

/// Where the window's end is kept in the store's meta table.
pub(super) const WINDOW_KEY: &str = "enroll_window_until_ms";

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
        let data = own_chain::enroll_data(
            agent,
            &record.public_key,
            cluster.as_str(),
            record.start_seq,
            record.revoked_from_seq,
        );
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
        Ok(())
    }
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
