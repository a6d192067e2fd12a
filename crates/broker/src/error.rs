//! What can stop the broker from starting or serving, each as one line that says what failed
//! and what to try. Causes are part of that line rather than error sources, so that printing
//! the chain (`{:#}` in the binary) does not repeat them.

use std::io;
use std::net::SocketAddr;

use crate::acl::AclError;
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
    Acl(AclError),
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
    #[error("cannot serve metrics on {addr}: {error} (check [metrics] listen / --metrics-listen)")]
    Metrics { addr: SocketAddr, error: String },
    #[error("no listener is enabled: set [listener] enabled = true, a [tls] address or a [websocket] address")]
    NoListener,
    #[error("rumqttd's router has stopped; the broker cannot route messages")]
    RouterGone,
    #[error("{0}")]
    Storage(crate::storage::StorageError),
    #[error("the write-ahead log could not be written (see the error above); the broker stopped")]
    StorageFailed,
}
