//! baton-runtime: the I/O glue both daemons stand on — the wall clock, MQTT
//! client settings, key files, config-file helpers, systemd notification
//! and shutdown signals, the reopenable redb handle with an injectable
//! storage backend, daily files, `/proc` figures, the damaged-file reader
//! salvage uses.
//!
//! *Invariant:* this crate decides nothing about the protocol. It never
//! judges an entry, a batch or a receipt, never chooses what to send or
//! when; those are `baton-shared`'s pure state machines. It reads clocks,
//! files and sockets for the shells that drive them.
//!
//! *Invariant:* `baton-agent` and `baton-gateway` depend on this crate and
//! never on each other (the gateway's demo and benchmarks, behind its
//! `tools` feature, are the one exception).

pub mod config;
pub mod daily;
pub mod db;
pub mod instance;
pub mod keys;
pub mod logging;
pub mod mqtt;
pub mod proc;
pub mod progress;
pub mod salvage;
pub mod service;
pub mod time;

pub use time::unix_ms;
