//! # baton-shared: the Baton protocol
//!
//! Everything the agent and the gateway must agree on, as pure code:
//! canonical JSON ([`json`], [`canonical`]), entries and the hash chain
//! ([`entry`]), keys, checkpoints and receipts ([`crypto`]), the streaming
//! verifier ([`verify`]), exported forms ([`export`]), the MQTT payloads
//! ([`wire`]), the two delivery state machines, [`uplink`] (sender) and
//! [`intake`] (receiver), and the fleet's view of itself: the clock
//! exchange ([`clock`]), the impedance profile ([`impedance`]), the
//! phi-accrual detector and agent states ([`liveness`]) and cluster
//! summaries ([`summary`]), the MQTT topics they travel on ([`topic`]), who may use which of
//! them ([`acl`]) and how a client proves who it is to a broker ([`login`]);
//! coordination (PROTOCOL §9): commands, their signatures, answers and the
//! quorum ([`command`]), arrival-time scheduling and the operating mode's
//! gate ([`schedule`]), circuit breakers ([`breaker`]) and gathering a
//! command's answers ([`gather`]).
//!
//! *Invariant:* this crate does no I/O. It reads no clock (`now` is passed
//! in), no file, no socket and no entropy; its dependency tree holds no
//! tokio, redb or rumqttc. The contract it implements is
//! `spec/PROTOCOL.md`, pinned by the vectors under `tests/data/`.

pub mod acl;
pub mod backoff;
pub mod breaker;
pub mod canonical;
pub mod clock;
pub mod command;
pub mod crypto;
pub mod entry;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod gather;
pub mod id;
pub mod impedance;
pub mod intake;
pub mod json;
pub mod liveness;
pub mod login;
pub mod memory;
pub mod salvage;
pub mod schedule;
pub mod summary;
pub mod topic;
pub mod uplink;
pub mod verify;
pub mod wire;

pub use crypto::{Hash, Nonce, PublicKey, SecretKey, Sig};
pub use entry::{Entry, Seq};
pub use id::{AgentId, ClusterId, CommandId, EventName};
