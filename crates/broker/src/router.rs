//! rumqttd's router, driven in-process. The broker spawns the router thread itself and reaches
//! it only through rumqttd's public local links (`rumqttd::local::LinkBuilder`): one link per
//! client connection, plus the broker's own ingest link (see `ingest`). The router keeps the
//! subscriptions, the in-memory commit logs, persistent sessions and retained messages; the
//! network, the rules and the accounting are ours (see `connection`).
//!
//! rumqttd's router runs on a std thread of its own ("router-0"). If it panics, nothing can be
//! routed any more: a panic hook makes that fatal instead of leaving a broker that accepts
//! clients it cannot serve.

use std::sync::{Arc, Once};

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::Notification;

use mqtt_protocol::exit;

/// What a new link needs to tell the router.
#[derive(Debug, Clone)]
pub(crate) struct LinkRequest {
    /// The id the router knows the client by (see `sessions::router_id`).
    pub client_id: String,
    pub clean_session: bool,
    /// Whether a publish to a topic no filter matches is kept in a log of its own (`true`) or
    /// makes the router disconnect the link (`false`, which no link of ours can afford).
    pub dynamic_filters: bool,
}

/// A link to the router: packets in, notifications out, and the router's CONNACK.
pub(crate) struct Link {
    pub tx: LinkTx,
    pub rx: LinkRx,
    pub connack: Notification,
}

/// The router did not give a link: it refused the client (an id it cannot take, no room
/// left) or it is gone.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the router gave no link: {0}")]
pub(crate) struct NoLink(String);

impl From<LinkError> for NoLink {
    fn from(error: LinkError) -> Self {
        NoLink(error.to_string())
    }
}

type Connect = dyn Fn(&LinkRequest) -> Result<Link, NoLink> + Send + Sync;

/// A running rumqttd router.
#[derive(Clone)]
pub(crate) struct Router {
    /// Builds a link; holds the router's channel (whose type rumqttd does not export).
    connect: Arc<Connect>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl Router {
    /// Spawns the router thread with `config`. Installs the panic hook first.
    pub(crate) fn spawn(config: rumqttd::RouterConfig) -> Router {
        install_router_panic_hook();
        let router_tx = rumqttd::Router::new(0, config).spawn();
        let connect = move |request: &LinkRequest| {
            let (tx, rx, connack) = LinkBuilder::new(&request.client_id, router_tx.clone())
                .clean_session(request.clean_session)
                .dynamic_filters(request.dynamic_filters)
                .build()?;
            Ok(Link { tx, rx, connack })
        };
        Router {
            connect: Arc::new(connect),
        }
    }

    /// Registers a connection with the router and returns its link. Building a link blocks
    /// until the router has answered, so it runs on a blocking thread. Fails when the router
    /// refuses (it does so without a CONNACK: an invalid id, no room) or is gone.
    pub(crate) async fn link(&self, request: LinkRequest) -> Result<Link, NoLink> {
        let connect = Arc::clone(&self.connect);
        match tokio::task::spawn_blocking(move || connect(&request)).await {
            Ok(result) => result,
            // Only a panic inside rumqttd's builder gets here.
            Err(e) => Err(NoLink(e.to_string())),
        }
    }
}

/// Installs (once per process) a panic hook that keeps the default message and then, if the
/// panicking thread is a rumqttd router thread, prints a clear error and exits with code 1.
pub fn install_router_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            if is_router_thread(std::thread::current().name()) {
                eprintln!(
                    "error: rumqttd router thread panicked; broker cannot route messages, exiting"
                );
                std::process::exit(i32::from(exit::RUNTIME_ERROR));
            }
        }));
    });
}

/// rumqttd names its router thread `router-{id}`.
fn is_router_thread(name: Option<&str>) -> bool {
    name.is_some_and(|n| n.starts_with("router-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_router_threads_count() {
        assert!(is_router_thread(Some("router-0")));
        assert!(!is_router_thread(Some("mqtt-v4-0")));
        assert!(!is_router_thread(Some("main")));
        assert!(!is_router_thread(None));
    }
}
