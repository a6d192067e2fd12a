//! TLS for the front: a rustls server configuration (ring provider) from PEM files, and
//! `mqtt-broker gen-certs DIR`, which makes a local CA and a server certificate for
//! 127.0.0.1 and localhost signed by it (behind `scripts/gen-certs`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {error}")]
    Read {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{path} holds no PEM {what} (make one with scripts/gen-certs DIR)")]
    Empty { what: &'static str, path: PathBuf },
    #[error("TLS certificate {cert} and key {key} are not usable together: {error}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("cannot make certificates: {0}")]
    Generate(String),
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })
}

/// A TLS acceptor for the certificate chain in `cert` and the private key in `key` (PEM).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_pem = read("TLS certificate", cert)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|error| TlsError::Read {
            what: "TLS certificate",
            path: cert.to_path_buf(),
            error,
        })?;
    if chain.is_empty() {
        return Err(TlsError::Empty {
            what: "certificate",
            path: cert.to_path_buf(),
        });
    }
    let key_pem = read("TLS key", key)?;
    let private: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|error| TlsError::Read {
            what: "TLS key",
            path: key.to_path_buf(),
            error,
        })?
        .ok_or_else(|| TlsError::Empty {
            what: "private key",
            path: key.to_path_buf(),
        })?;
    let config_error = |error| TlsError::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        error,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(config_error)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Writes `ca.pem`, `ca.key`, `server.pem` and `server.key` into `dir` (created if missing): a
/// local CA and a server certificate for 127.0.0.1, ::1 and localhost that it signed. Returns
/// the paths written.
pub fn generate(dir: &Path) -> Result<Vec<PathBuf>, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let generate_error = |e: rcgen::Error| TlsError::Generate(e.to_string());

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(generate_error)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mqtt-pipeline local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(generate_error)?;
    let ca = ca_params.self_signed(&ca_key).map_err(generate_error)?;

    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut server_params = CertificateParams::new(names).map_err(generate_error)?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "mqtt-broker");
    let server_key = KeyPair::generate().map_err(generate_error)?;
    let server = server_params
        .signed_by(&server_key, &ca, &ca_key)
        .map_err(generate_error)?;

    std::fs::create_dir_all(dir).map_err(|error| TlsError::Write {
        path: dir.to_path_buf(),
        error,
    })?;
    let files = [
        ("ca.pem", ca.pem(), 0o644),
        ("ca.key", ca_key.serialize_pem(), 0o600),
        ("server.pem", server.pem(), 0o644),
        ("server.key", server_key.serialize_pem(), 0o600),
    ];
    let mut written = Vec::new();
    for (name, pem, mode) in files {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = dir.join(name);
        let write_error = |error| TlsError::Write {
            path: path.clone(),
            error,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(write_error)?;
        file.write_all(pem.as_bytes()).map_err(write_error)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_make_an_acceptor() {
        let dir = std::env::temp_dir().join(format!("mqtt-tls-unit-{}", std::process::id()));
        let files = generate(&dir).unwrap();
        assert_eq!(files.len(), 4);
        acceptor(&dir.join("server.pem"), &dir.join("server.key")).unwrap();
        let err = acceptor(&dir.join("server.key"), &dir.join("server.key"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
