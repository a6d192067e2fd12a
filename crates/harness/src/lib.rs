//! Processes on loopback for the end-to-end tests (tests/, crates/broker/tests) and the
//! benchmark (crates/bench), in one place: starting, waiting for, measuring and stopping
//! them ([`process`]), finding the third-party programs they run ([`peers`]) and the
//! 3-node NATS cluster ([`nats`], also behind `scripts/cluster`).

pub mod http;
pub mod nats;
pub mod peers;
pub mod process;
