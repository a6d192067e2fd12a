//! rumqttd binds its listener inside its own thread and only logs a failure, so the broker
//! binds the address itself first: a taken port becomes a clear error before anything starts,
//! and port 0 becomes a concrete free port that rumqttd can be given (rumqttd would not tell
//! us which port it got).

use std::io;
use std::net::{SocketAddr, TcpListener};

use crate::error::BrokerError;

/// Binds `addr` for a moment and returns the concrete address (port 0 resolved). The listener
/// is closed again at once; rumqttd re-binds the same address right after.
pub(crate) fn claim(addr: SocketAddr) -> Result<SocketAddr, BrokerError> {
    let listener = TcpListener::bind(addr).map_err(|e| bind_error(addr, e))?;
    listener.local_addr().map_err(|e| bind_error(addr, e))
}

pub(crate) fn bind_error(addr: SocketAddr, error: io::Error) -> BrokerError {
    match error.kind() {
        io::ErrorKind::AddrInUse => BrokerError::AddrInUse { addr },
        io::ErrorKind::AddrNotAvailable => BrokerError::Bind {
            addr,
            error,
            hint: "that IP address is not one of this host's; try 127.0.0.1 or 0.0.0.0",
        },
        io::ErrorKind::PermissionDenied => BrokerError::Bind {
            addr,
            error,
            hint: "ports below 1024 need privileges; try a port above 1024",
        },
        _ => BrokerError::Bind {
            addr,
            error,
            hint: "try --listen 127.0.0.1:0",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_becomes_a_real_port() {
        let addr = claim("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(addr.ip().to_string(), "127.0.0.1");
        assert_ne!(addr.port(), 0);
    }

    #[test]
    fn a_taken_port_is_reported_as_in_use() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = claim(addr).unwrap_err();
        assert!(matches!(err, BrokerError::AddrInUse { .. }), "{err}");
        assert!(err.to_string().contains("is already in use"), "{err}");
    }
}
