//! Who is connected, by client id. A second CONNECT with a client id that is connected takes
//! the session over (MQTT-3.1.4-2): the first connection is closed, and finishes leaving the
//! router, before the second one's link is built, so the router never sees two links with one
//! id. Persistent sessions also leave behind where their subscribers stood in the router's
//! logs (see `delivery`), so that a message lost while they were away is still counted.
//!
//! The router refuses client ids that contain `+ $ # /`, which MQTT allows; the broker gives
//! the router an escaped id instead (`router_id`), so every valid id works.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::delivery::Saved;

/// How long a taking-over connection waits for the one it replaces to leave.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// The id the router knows a client by: the client id with `%`, `+`, `$`, `#` and `/` written
/// as `%XX`. Injective, so two clients never share a router id, and no escaped id contains a
/// `%` that is not followed by two hex digits, which leaves such ids to the broker's own links.
pub(crate) fn router_id(client_id: &str) -> Cow<'_, str> {
    if !client_id.contains(['%', '+', '$', '#', '/']) {
        return Cow::Borrowed(client_id);
    }
    let mut escaped = String::with_capacity(client_id.len() + 8);
    for c in client_id.chars() {
        match c {
            '%' | '+' | '$' | '#' | '/' => escaped.push_str(&format!("%{:02X}", c as u32)),
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// One live connection, as the registry knows it.
#[derive(Debug)]
struct Live {
    generation: u64,
    /// Cancelled to ask the connection to close because another took its session over.
    takeover: CancellationToken,
    /// Cancelled once the connection has left the router.
    finished: CancellationToken,
}

/// The registry of live connections and of persistent sessions' delivery positions.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<String, Live>>,
    saved: Mutex<HashMap<String, Saved>>,
    generations: AtomicU64,
}

/// A connection's hold on its client id; dropping it says the connection has left.
#[derive(Debug)]
pub(crate) struct Claim<'a> {
    sessions: &'a Sessions,
    id: String,
    generation: u64,
    /// Cancelled when a newer connection with the same client id takes over.
    pub takeover: CancellationToken,
    finished: CancellationToken,
}

impl Sessions {
    /// Claims `router_id` for a new connection. If a connection holds it, that one is asked to
    /// close and given up to 5 s to leave the router first.
    pub(crate) async fn claim(&self, router_id: &str) -> Claim<'_> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let takeover = CancellationToken::new();
        let finished = CancellationToken::new();
        let previous = self.lock_live().insert(
            router_id.to_owned(),
            Live {
                generation,
                takeover: takeover.clone(),
                finished: finished.clone(),
            },
        );
        if let Some(previous) = previous {
            previous.takeover.cancel();
            let _ = tokio::time::timeout(TAKEOVER_WAIT, previous.finished.cancelled()).await;
        }
        Claim {
            sessions: self,
            id: router_id.to_owned(),
            generation,
            takeover,
            finished,
        }
    }

    /// Takes what a persistent session left behind when it last went away.
    pub(crate) fn take_saved(&self, router_id: &str) -> Option<Saved> {
        self.lock_saved().remove(router_id)
    }

    /// Keeps what a persistent session leaves behind until it comes back.
    pub(crate) fn save(&self, router_id: &str, saved: Saved) {
        self.lock_saved().insert(router_id.to_owned(), saved);
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_saved(&self) -> std::sync::MutexGuard<'_, HashMap<String, Saved>> {
        self.saved.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut live = self.sessions.lock_live();
        if live
            .get(&self.id)
            .is_some_and(|l| l.generation == self.generation)
        {
            live.remove(&self.id);
        }
        drop(live);
        self.finished.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_ids_escape_what_the_router_refuses_and_stay_distinct() {
        assert_eq!(router_id("sensor-1"), "sensor-1");
        assert_eq!(router_id("a/b"), "a%2Fb");
        assert_eq!(router_id("$x+#"), "%24x%2B%23");
        assert_eq!(router_id("%2F"), "%252F");
        assert_ne!(router_id("a/b"), router_id("a%2Fb"));
        for id in ["a/b", "%", "x$", "#"] {
            assert!(!router_id(id).contains(['+', '$', '#', '/']), "{id}");
        }
    }

    #[tokio::test]
    async fn a_second_claim_takes_over_and_waits_for_the_first_to_leave() {
        let sessions = Sessions::default();
        let first = sessions.claim("c").await;
        let takeover = first.takeover.clone();
        let leaving = async {
            takeover.cancelled().await;
            drop(first);
        };
        let (second, ()) = tokio::join!(sessions.claim("c"), leaving);
        assert!(!second.takeover.is_cancelled());
        assert_eq!(sessions.lock_live().len(), 1);
        drop(second);
        assert!(sessions.lock_live().is_empty());
    }
}
