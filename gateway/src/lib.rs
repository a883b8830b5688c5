//! # baton-gateway
//!
//! The cluster lead: MQTT ingest of every agent's chain through the
//! protocol's `intake` state machine, durable storage in redb, signed
//! receipts, and the gateway's own chain.

pub mod archive;
pub mod auth;
#[cfg(feature = "tools")]
pub mod bench;
pub mod broker;
pub mod cli;
pub mod command;
pub mod config;
pub mod console;
#[cfg(feature = "tools")]
pub mod console_bench;
#[cfg(feature = "tools")]
pub mod coord_bench;
pub mod daily;
#[cfg(feature = "tools")]
pub mod demo;
pub mod dispatch;
pub mod export;
pub mod fleet;
#[cfg(feature = "tools")]
pub mod fleet_bench;
#[cfg(feature = "tools")]
pub mod fleet_run;
#[cfg(feature = "tools")]
pub mod fleet_sim;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod mosquitto;
pub mod operator;
pub mod own_chain;
#[cfg(feature = "tools")]
pub mod publisher;
pub mod rebuild;
pub mod registry;
pub mod report;
pub mod server;
#[cfg(feature = "tools")]
pub mod tier_bench;
#[cfg(feature = "tools")]
pub mod tools;
pub mod upstream;

pub use config::Config;
pub use server::run;
pub mod store;

/// The name the daemon's instance lock goes by (`<data_dir>/baton-gateway.lock`).
pub const DAEMON: &str = "baton-gateway";
