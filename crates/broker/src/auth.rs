//! Authentication from a password file: one `user:hash` line per user, where the hash is an
//! argon2id PHC string with its own random salt (`$argon2id$v=19$m=19456,t=2,p=1$...`), so the
//! file never holds a password in clear. `mqtt-broker passwd FILE USER` writes it; the front
//! checks every CONNECT against it. Hashing is deliberately slow, so verifications run on
//! blocking threads, at most two at a time: a flood of CONNECTs cannot starve the forwarding.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

/// Why a password file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read password file {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("cannot write password file {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
    #[error("password file {path}, line {line}: {problem} (expected USER:ARGON2-HASH, as written by `mqtt-broker passwd`)")]
    Invalid {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("invalid user name {0:?}: must be non-empty, without ':' or line breaks")]
    BadUser(String),
    #[error("the password must not be empty")]
    EmptyPassword,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// The outcome of checking a CONNECT's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    NoCredentials,
    Denied,
}

/// The users of a password file, loaded once at start.
#[derive(Debug)]
pub struct Users {
    hashes: HashMap<String, String>,
    /// Verified against when the user is unknown, so that an unknown user takes as long as a
    /// wrong password.
    decoy: String,
    permits: Arc<Semaphore>,
}

impl Users {
    /// Loads and checks a password file (every line a parsable argon2 hash).
    pub fn load(path: &Path) -> Result<Users, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|error| AuthError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let invalid = |problem: &str| AuthError::Invalid {
                path: path.to_path_buf(),
                line: i + 1,
                problem: problem.to_owned(),
            };
            let (user, hash) = line.split_once(':').ok_or_else(|| invalid("no ':'"))?;
            PasswordHash::new(hash).map_err(|e| invalid(&format!("not a password hash ({e})")))?;
            hashes.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Users {
            hashes,
            decoy: hash_password(b"decoy")?,
            permits: Arc::new(Semaphore::new(2)),
        })
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Checks a CONNECT's user name and password.
    pub(crate) async fn verify(&self, user: Option<&str>, password: Option<Vec<u8>>) -> Verdict {
        let (Some(user), Some(password)) = (user, password) else {
            return Verdict::NoCredentials;
        };
        let (hash, known) = match self.hashes.get(user) {
            Some(hash) => (hash.clone(), true),
            None => (self.decoy.clone(), false),
        };
        let Ok(_permit) = self.permits.acquire().await else {
            return Verdict::Denied;
        };
        let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false);
        if matches && known {
            Verdict::Allowed
        } else {
            Verdict::Denied
        }
    }
}

fn verify_password(password: &[u8], hash: &str) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
}

/// An argon2id hash of `password` with a fresh random salt, as a PHC string.
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Adds `user` to the password file at `path` (created if missing), or changes their password.
/// The file is replaced atomically and readable by its owner only.
pub fn set_password(path: &Path, user: &str, password: &str) -> Result<bool, AuthError> {
    if user.is_empty() || user.contains([':', '\n', '\r']) || user.trim() != user {
        return Err(AuthError::BadUser(user.to_owned()));
    }
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(error) => {
            return Err(AuthError::Read {
                path: path.to_path_buf(),
                error,
            })
        }
    };
    let line = format!("{user}:{}", hash_password(password.as_bytes())?);
    let mut replaced = false;
    let mut out = String::new();
    for old in existing.lines() {
        if old.split_once(':').is_some_and(|(u, _)| u == user) {
            out.push_str(&line);
            replaced = true;
        } else {
            out.push_str(old);
        }
        out.push('\n');
    }
    if !replaced {
        out.push_str(&line);
        out.push('\n');
    }
    let write_error = |error| AuthError::Write {
        path: path.to_path_buf(),
        error,
    };
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_error)?;
        file.write_all(out.as_bytes()).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
    }
    std::fs::rename(&tmp, path).map_err(write_error)?;
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_are_hashed_and_verified() {
        let dir = std::env::temp_dir().join(format!("mqtt-auth-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("passwd");
        assert!(!set_password(&file, "alice", "s3cret").unwrap());
        assert!(!set_password(&file, "bob", "other").unwrap());
        assert!(set_password(&file, "alice", "n3w").unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("n3w") && !text.contains("s3cret"), "{text}");
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("alice:$argon2id$"), "{text}");

        let users = Users::load(&file).unwrap();
        assert_eq!(users.len(), 2);
        let pw = |s: &str| Some(s.as_bytes().to_vec());
        assert_eq!(
            users.verify(Some("alice"), pw("n3w")).await,
            Verdict::Allowed
        );
        assert_eq!(
            users.verify(Some("alice"), pw("s3cret")).await,
            Verdict::Denied
        );
        assert_eq!(
            users.verify(Some("carol"), pw("n3w")).await,
            Verdict::Denied
        );
        assert_eq!(users.verify(None, None).await, Verdict::NoCredentials);
        assert_eq!(
            users.verify(Some("bob"), None).await,
            Verdict::NoCredentials
        );

        assert!(matches!(
            set_password(&file, "a:b", "x"),
            Err(AuthError::BadUser(_))
        ));
        std::fs::write(&file, "alice:plaintext\n").unwrap();
        let err = Users::load(&file).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
