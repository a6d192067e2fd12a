//! What the publisher and the subscriber share beyond the domain: reaching a broker
//! (address, TLS, credentials, the fail-fast first connection), failover between
//! brokers, riding out a lost connection, progress output, logging, and the flags both
//! take, defined once. The readings, their verification and the reports are the
//! domain's (`mqtt-protocol`), which knows nothing of command lines or connections.

pub mod connect;
pub mod failover;
pub mod flags;
pub mod logging;
pub mod progress;
pub mod reconnect;

/// Ctrl-C and SIGTERM as a cancellation token. It lives in `mqtt-protocol` because the
/// broker stops on it too; the clients take it from here with the rest of their plumbing.
pub use mqtt_protocol::shutdown;
