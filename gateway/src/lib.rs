//! # baton-gateway
//!
//! The cluster lead: MQTT ingest of every agent's chain through the
//! protocol's `intake` state machine, durable storage in redb, signed
//! receipts, and the gateway's own chain.

pub mod ingest;
pub mod metrics;
pub mod own_chain;
pub mod store;
