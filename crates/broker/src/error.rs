//! What can stop the broker from starting or serving, each as one line that says what failed
//! and what to try. Causes are part of that line rather than error sources, so that printing
//! the chain (`{:#}` in the binary) does not repeat them.

use std::io;
use std::net::SocketAddr;

use crate::auth::AuthError;
use crate::config::InvalidSetting;
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid configuration: {0}")]
    Config(InvalidSetting),
    #[error("{0}")]
    Auth(AuthError),
    #[error("{0}")]
    Tls(TlsError),
    #[error(
        "address {addr} is already in use (another broker running?): \
         try --listen 127.0.0.1:0 or stop the other process"
    )]
    AddrInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {error} ({hint})")]
    Bind {
        addr: SocketAddr,
        error: io::Error,
        hint: &'static str,
    },
    #[error("cannot start rumqttd's thread: {0}")]
    Spawn(io::Error),
    #[error("rumqttd could not serve on {addr}: {error}")]
    ServerFailed { addr: SocketAddr, error: String },
    #[error("rumqttd did not report listening on {addr} within {secs} s; giving up")]
    StartTimeout { addr: SocketAddr, secs: u64 },
    #[error("rumqttd stopped serving on {addr} ({detail}); the broker cannot continue")]
    Stopped { addr: SocketAddr, detail: String },
    #[error("rumqttd's router stopped ({reason}); the broker cannot route messages")]
    RouterDone { reason: String },
    #[error(
        "rumqttd's lifecycle events are not being observed: install the broker's logging \
         (mqtt_broker::logging::init) or mqtt_broker::lifecycle_layer before starting it"
    )]
    NotObservable,
}
