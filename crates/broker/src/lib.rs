//! The pipeline's MQTT broker: rumqttd's router, embedded in-process, behind an MQTT network
//! layer of our own. The broker owns every socket (`listener`), reads and judges every packet
//! (`connection`, `packet`), authenticates (`auth`) and encrypts (`tls`), hands publishes to
//! the router through one link of its own (`ingest`) and acknowledges them itself, and knows
//! where each subscriber stands in the router's logs (`delivery`), so a message the router
//! skips is counted, not guessed from log text. Configuration is our own TOML file (`config`).
//!
//! The binary is `config::BrokerConfig::load` → `logging::init` → [`run`].

pub mod acl;
pub mod auth;
pub mod config;
mod connection;
mod delivery;
mod direct;
mod error;
mod flow;
mod hub;
mod ingest;
mod listener;
mod log;
pub mod logging;
mod noise;
mod packet;
mod prometheus;
mod recovery;
mod retained;
mod router;
mod server;
mod sessions;
mod storage;
mod ticker;
pub mod tls;
mod websocket;

pub use config::BrokerConfig;
pub use error::BrokerError;
pub use router::install_router_panic_hook;
pub use server::{run, start, RunningBroker, READY_PREFIX, READY_TLS_PREFIX, READY_WS_PREFIX};
pub use storage::StorageError;
