//! The pipeline's MQTT broker: rumqttd embedded as a library, configured from our own TOML
//! file, with what rumqttd leaves out: knowing for sure that it listens (or why it does not),
//! logs in which a dropped client connection is not an ERROR, and a network front of our own
//! (`front`) that enforces limits, packet rules, authentication (`auth`) and TLS (`tls`)
//! before a connection reaches rumqttd.
//!
//! The binary is `config::BrokerConfig::load` → `logging::init` → [`run`].

pub mod auth;
pub mod config;
mod error;
mod front;
mod lifecycle;
mod listener;
pub mod logging;
mod noise;
mod router_guard;
mod server;
pub mod tls;

pub use config::BrokerConfig;
pub use error::BrokerError;
pub use lifecycle::layer as lifecycle_layer;
pub use router_guard::install_router_panic_hook;
pub use server::{run, start, RunningBroker, READY_PREFIX, READY_TLS_PREFIX};
