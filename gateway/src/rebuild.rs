//! Rebuilding a store whose file redb cannot open (issue 15, SIRE's alert
//! state for the gateway as a whole).
//!
//! The file is damaged, not gone: its bytes still hold the gateway's own
//! chain, every entry signed under the gateway's key, and that chain names
//! what the store knew that nobody else can resend — whom an operator
//! trusted (`enroll`, `operator`), which agents are halted (`alert` with a
//! `seq`), how far each chain was receipted (`checkpoint`). Salvage
//! (`baton_shared::salvage`) finds the own chain by its signatures without
//! redb's structures; [`rebuild`] writes a fresh store holding that chain
//! at its seqs and the trust it implies, and records every receipted chain
//! as one to rebuild from its agent's (or child's) resends — the gateway is
//! in alert until they are, and what an agent can no longer send is a
//! `gap` under rule 3b.
//!
//! Never a second genesis: with no own chain from seq 1 recovered, there is
//! no rebuild and the gateway refuses to start (a new genesis would fork
//! the chain its parent holds).
//!
//! Crash safety: the new store is written beside the damaged one
//! (`<store>.rebuilding`) and only when complete does the damaged file move
//! aside (`<store>.damaged-<unix ms>`) and the new one into place.
//! [`finish_interrupted`] completes or discards what a crash left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use baton_runtime::salvage::{Records, scan_file};
use baton_shared::json::{self, Mode, Value};
use baton_shared::{AgentId, ClusterId, Entry, PublicKey, Seq};

use crate::own_chain::EnrollData;
use crate::store::{AgentRecord, Damage, EnrolledBy, Store, StoreError, Write};

/// Own-chain entries per commit while the new store is written (redb holds
/// a transaction's pages in memory until it commits).
const GROUP: usize = 10_000;

/// What a rebuild recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Where the damaged file now is.
    pub aside: PathBuf,
    /// Why it could not be opened.
    pub problem: String,
    /// The own chain is back through this seq.
    pub own_head: Seq,
    /// Own-chain seqs nothing recovered (inclusive ranges).
    pub lost: Vec<(Seq, Seq)>,
    /// Own-chain entries found past what was lost: read for the trust they
    /// record, left in the damaged file (they can no longer link).
    pub later: usize,
    /// Enrollments restored (key-file ones come back from their files too;
    /// agents vouched for by a child come back with its chain).
    pub enrolled: usize,
    /// Fork halts restored.
    pub halted: usize,
    /// Receipted chains to rebuild from resends.
    pub to_rebuild: usize,
}

impl Rebuilt {
    /// The words of the gateway's `alert` entry and its log line.
    pub fn detail(&self) -> String {
        let lost = baton_shared::salvage::ranges_text(&self.lost);
        format!(
            "store damaged ({}); kept at {}; rebuilt: own chain through seq {} (seqs not \
             recovered: [{lost}], {} later entries read for trust only), {} enrollments and \
             {} halts restored, {} chains rebuilding from resends",
            self.problem,
            self.aside.display(),
            self.own_head,
            self.later,
            self.enrolled,
            self.halted,
            self.to_rebuild,
        )
    }
}

/// Why there is no rebuild.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("reading it for salvage: {0}")]
    Read(#[from] std::io::Error),
    #[error(
        "nothing of this gateway's own chain from its genesis verifies in it (a new genesis \
         would fork the chain its parent holds)"
    )]
    NoOwnChain,
    #[error("writing the rebuilt store: {0}")]
    Store(#[from] StoreError),
}

/// Where a rebuild writes the new store.
pub fn rebuilding_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".rebuilding");
    PathBuf::from(p)
}

/// Completes or discards a rebuild a crash interrupted; call before
/// opening the store. The damaged file moves aside only once the new one
/// is complete, so a new store with no store beside it is complete.
pub fn finish_interrupted(path: &Path) -> std::io::Result<()> {
    let tmp = rebuilding_path(path);
    if !tmp.exists() {
        return Ok(());
    }
    if path.exists() {
        std::fs::remove_file(&tmp)
    } else {
        tracing::warn!(store = %path.display(), "finishing a store rebuild a crash interrupted");
        std::fs::rename(&tmp, path)
    }
}

/// Rebuilds the store at `path`, which could not be opened for `problem`,
/// from the own chain of `own` (id, key) salvaged from it. See the module
/// description.
pub fn rebuild(
    path: &Path,
    own: &(AgentId, PublicKey),
    problem: &str,
    now_ms: i64,
) -> Result<Rebuilt, RebuildError> {
    let s = scan_file(path, &own.0, &own.1)?;
    // Only what the gateway's signature vouches for: the chain from genesis
    // through its last signed entry (each own entry is signed as made; an
    // unsigned tail is damage or forgery).
    let signed = s.chain.iter().rposition(|l| l.signed).map_or(0, |i| i + 1);
    let chain = &s.chain[..signed];
    if s.anchor.is_some() || chain.first().is_none_or(|l| l.seq != Seq(1)) {
        return Err(RebuildError::NoOwnChain);
    }
    let mut records = Records::open(path)?;
    let tmp = rebuilding_path(path);
    if tmp.exists() {
        std::fs::remove_file(&tmp)?;
    }
    let store = Store::open(&tmp)?;
    let mut trust = Trust::default();
    let mut own_head = Seq::ZERO;
    for group in chain.chunks(GROUP) {
        let mut entries = Vec::with_capacity(group.len());
        for loc in group {
            let e = records.read(loc)?;
            trust.learn(&e);
            entries.push(e);
            own_head = loc.seq;
        }
        store.commit(&[Write::Entries {
            agent: own.0.clone(),
            first: group[0].seq,
            entries,
        }])?;
    }
    let mut later = 0;
    for loc in s.stranded.iter().filter(|l| l.signed) {
        trust.learn(&records.read(loc)?);
        later += 1;
    }
    let mut writes = vec![Write::Enroll {
        agent: own.0.clone(),
        record: AgentRecord {
            public_key: own.1.to_bytes(),
            start_seq: None,
            revoked_from_seq: None,
            enrolled_by: EnrolledBy::SelfChain,
            enrolled_ms: now_ms,
        },
    }];
    let (enrolled, halted) = (trust.records.len(), trust.halted.len());
    for (agent, mut record) in trust.records {
        record.enrolled_ms = now_ms;
        writes.push(Write::Enroll { agent, record });
    }
    for (agent, seq) in trust.halted {
        writes.push(Write::Fork {
            agent,
            seq,
            evidence: Vec::new(),
        });
    }
    store.commit(&writes)?;
    let damage: Vec<(AgentId, Damage)> = trust
        .receipted
        .into_iter()
        .filter(|(agent, _)| *agent != own.0)
        .map(|(agent, head)| {
            let d = Damage {
                from: Seq(1),
                head,
                problem: format!("the store was rebuilt ({problem})"),
                at_ms: now_ms,
            };
            (agent, d)
        })
        .collect();
    store.record_damage(&damage)?;
    drop(store);

    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".damaged-{now_ms}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside)?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(Rebuilt {
        aside,
        problem: problem.to_owned(),
        own_head,
        lost: s.lost,
        later,
        enrolled,
        halted,
        to_rebuild: damage.len(),
    })
}

/// What the gateway's own chain says it trusted, halted and receipted,
/// read entry by entry in seq order.
#[derive(Debug, Default)]
struct Trust {
    records: BTreeMap<AgentId, AgentRecord>,
    halted: BTreeMap<AgentId, Seq>,
    receipted: BTreeMap<AgentId, Seq>,
}

impl Trust {
    fn learn(&mut self, e: &Entry) {
        let Ok(content) = json::parse(&e.content, Mode::Verify) else {
            return;
        };
        let Some(o) = content.as_object() else {
            return;
        };
        let data = o.get("data");
        let field = |name: &str| data.and_then(|d| d.as_object()).and_then(|d| d.get(name));
        let agent = || {
            field("agent")
                .and_then(Value::as_str)
                .and_then(|a| AgentId::new(a).ok())
        };
        match o.get("event").and_then(Value::as_str) {
            Some("enroll") => {
                if let Some(d) = EnrollData::parse(data)
                    && let Some(enrolled_by) = trusted_by(d.by.as_deref())
                {
                    self.records.insert(
                        d.agent,
                        AgentRecord {
                            public_key: d.public_key.to_bytes(),
                            start_seq: d.start_seq,
                            revoked_from_seq: d.revoked_from_seq,
                            enrolled_by,
                            enrolled_ms: 0,
                        },
                    );
                }
            }
            Some("operator") => {
                let Some(a) = agent() else { return };
                match field("action").and_then(Value::as_str) {
                    Some("unenroll") => {
                        self.records.remove(&a);
                    }
                    Some("resolve") => {
                        self.halted.remove(&a);
                    }
                    _ => {}
                }
            }
            Some("alert") => {
                if let Some(a) = agent()
                    && matches!(
                        field("kind").and_then(Value::as_str),
                        Some("fork" | "cloned_identity")
                    )
                {
                    let seq = field("seq").and_then(Value::as_exact_u64).unwrap_or(0);
                    self.halted.insert(a, Seq(seq));
                }
            }
            Some("checkpoint") => {
                if let (Some(a), Some(seq)) = (agent(), field("seq").and_then(Value::as_exact_u64))
                {
                    let at = self.receipted.entry(a).or_insert(Seq::ZERO);
                    *at = (*at).max(Seq(seq));
                }
            }
            _ => {}
        }
    }
}

/// The trust an `enroll` entry's `by` restores here. Agents vouched for by
/// a child come back when the child resends its chain; the gateway's own
/// record is written with the chain.
pub(crate) fn trusted_by(by: Option<&str>) -> Option<EnrolledBy> {
    match by {
        // Entries from before `by` was recorded: operator enrollments.
        None | Some("operator") => Some(EnrolledBy::Operator),
        Some("key-file") => Some(EnrolledBy::KeyFile),
        Some("first-use") => Some(EnrolledBy::TrustOnFirstUse),
        Some(other) => {
            let cluster = other.strip_prefix("child-gateway(")?.strip_suffix(')')?;
            ClusterId::new(cluster)
                .ok()
                .map(|cluster| EnrolledBy::ChildGateway { cluster })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::own_chain::{self, OwnChain, OwnEvent};
    use baton_shared::SecretKey;
    use baton_shared::intake::Head;
    use baton_shared::json::Object;

    fn id(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed(&[n; 32])
    }

    fn operator(action: &str, agent: &str) -> Value {
        let mut d = Object::new();
        d.insert("action", Value::from(action));
        d.insert("channel", Value::from("http"));
        d.insert("agent", Value::from(agent));
        Value::Object(d)
    }

    fn enroll(agent: &str, n: u8, by: &EnrolledBy) -> Value {
        let mut d =
            own_chain::enroll_data(&id(agent), &key(n).public().to_bytes(), "c1", None, None);
        if let Value::Object(o) = &mut d {
            o.insert("by", Value::from(by.describe()));
        }
        d
    }

    /// A store whose own chain enrolls, unenrolls, halts, resolves and
    /// checkpoints, plus an agent's chain; returns the gateway's identity.
    fn populated(path: &Path) -> (AgentId, SecretKey) {
        let (gw, gk) = (id("gw-1"), key(1));
        let store = Store::open(path).unwrap();
        let mut own = OwnChain::new(gw.clone(), gk.clone(), Head::EMPTY);
        let t = 1_790_000_000_000;
        let child = EnrolledBy::ChildGateway {
            cluster: ClusterId::new("c2").unwrap(),
        };
        let vouched = EnrolledBy::Vouched {
            via: id("c2-gw"),
            cluster: ClusterId::new("c2").unwrap(),
            at_seq: Seq(3),
        };
        let steps = [
            (OwnEvent::Enroll, enroll("pi-a", 2, &EnrolledBy::Operator)),
            (OwnEvent::Enroll, enroll("pi-b", 3, &EnrolledBy::Operator)),
            (OwnEvent::Enroll, enroll("pi-c", 4, &EnrolledBy::KeyFile)),
            (OwnEvent::Enroll, enroll("c2-gw", 5, &child)),
            (OwnEvent::Enroll, enroll("pi-v", 6, &vouched)),
            (OwnEvent::Operator, operator("unenroll", "pi-b")),
            (
                OwnEvent::Alert,
                own_chain::halt_alert_data("fork", &id("pi-a"), Seq(7), "two entries at seq 7"),
            ),
            (
                OwnEvent::Alert,
                own_chain::halt_alert_data("fork", &id("pi-c"), Seq(9), "two entries at seq 9"),
            ),
            (OwnEvent::Operator, operator("resolve", "pi-c")),
        ];
        let mut writes = vec![own.genesis(t, "test").unwrap()];
        for (event, data) in steps {
            writes.push(own.append(t, event, data).unwrap());
        }
        for seq in [20, 40] {
            let head = Head {
                seq: Seq(seq),
                hash: baton_shared::Hash::ZERO,
                sig: None,
            };
            let data = own_chain::checkpoint_data(&id("pi-a"), &head);
            writes.push(own.append(t, OwnEvent::Checkpoint, data).unwrap());
        }
        store.commit(&writes).unwrap();
        (gw, gk)
    }

    fn damage_header(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        for b in &mut bytes[..64] {
            *b ^= 0x5a;
        }
        std::fs::write(path, &bytes).unwrap();
    }

    #[test]
    fn a_store_redb_cannot_open_gets_its_own_chain_and_trust_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.redb");
        let (gw, gk) = populated(&path);
        damage_header(&path);
        assert!(Store::open(&path).is_err(), "the damage is real");

        let own = (gw.clone(), gk.public());
        let r = rebuild(&path, &own, "header damaged", 5).unwrap();
        assert_eq!(r.own_head, Seq(12));
        assert!(r.lost.is_empty());
        assert_eq!((r.enrolled, r.halted, r.to_rebuild), (3, 1, 1));
        assert!(r.aside.exists() && !rebuilding_path(&path).exists());

        let store = Store::open(&path).unwrap();
        assert_eq!(store.head(&gw).unwrap().seq, Seq(12));
        let by = |a: &str| store.agent(&id(a)).unwrap().map(|r| r.enrolled_by);
        assert_eq!(by("pi-a"), Some(EnrolledBy::Operator));
        assert_eq!(by("pi-b"), None, "unenrolled stays unenrolled");
        assert_eq!(by("pi-c"), Some(EnrolledBy::KeyFile));
        assert!(matches!(by("c2-gw"), Some(EnrolledBy::ChildGateway { .. })));
        assert_eq!(by("pi-v"), None, "vouches come back with the child's chain");
        assert_eq!(by("gw-1"), Some(EnrolledBy::SelfChain));
        assert_eq!(
            store.agent(&id("pi-a")).unwrap().unwrap().public_key,
            key(2).public().to_bytes()
        );
        assert_eq!(store.halted(&id("pi-a")).unwrap(), Some(Seq(7)));
        assert_eq!(store.halted(&id("pi-c")).unwrap(), None, "resolved");
        let damage = store.damage().unwrap();
        assert_eq!(damage.len(), 1);
        assert_eq!((damage[0].1.from, damage[0].1.head), (Seq(1), Seq(40)));
        // the chain it holds is the one that was signed
        let entries = store.range(&gw, Seq(1), 100).unwrap();
        assert_eq!(entries.len(), 12);
        for (seq, e) in &entries {
            let sig = e.sig.unwrap();
            assert!(gk.public().verify_checkpoint(&gw, *seq, &e.hash, &sig));
        }
    }

    #[test]
    fn without_its_own_chain_there_is_no_rebuild_and_the_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.redb");
        let (gw, _) = populated(&path);
        damage_header(&path);
        // another key: nothing in the file verifies as this gateway's chain
        let own = (gw, key(9).public());
        let e = rebuild(&path, &own, "header damaged", 5).unwrap_err();
        assert!(matches!(e, RebuildError::NoOwnChain), "{e}");
        assert!(path.exists() && !rebuilding_path(&path).exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_interrupted_rebuild_is_finished_or_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.redb");
        let tmp = rebuilding_path(&path);
        // before the damaged file moved: the half-written one goes
        std::fs::write(&path, b"damaged").unwrap();
        std::fs::write(&tmp, b"half").unwrap();
        finish_interrupted(&path).unwrap();
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"damaged");
        // after it moved: the complete one goes into place
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&tmp, b"rebuilt").unwrap();
        finish_interrupted(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"rebuilt");
    }
}
