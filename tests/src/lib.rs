//! End-to-end tests of Baton over real MQTT: real brokers (the embedded one,
//! and Mosquitto in CI), real agent and gateway processes, real redb files.
//!
//! The crate is empty until the gateway and agent land (issues 3 and 4);
//! the protocol core's tests live in `shared/tests/`.
