//! # baton-gateway
//!
//! The cluster lead: MQTT ingest of every agent's chain through the
//! protocol's `intake` state machine, durable storage in redb, signed
//! receipts, and the gateway's own chain.

pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod fleet_bench;
pub mod http;
pub mod ingest;
/// Key files (shared with the agent).
pub use baton_agent::keys;
pub mod metrics;
pub mod mosquitto;
pub mod own_chain;
pub mod publisher;
pub mod registry;
pub mod server;
pub mod tier_bench;
pub mod upstream;

pub use config::Config;
pub use server::run;
pub mod store;
