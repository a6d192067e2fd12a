//! rumqttd binds its listener inside a thread of its own and reports the outcome only as log
//! events: "Listening for remote connections" once bound, "Server error - V4" when the bind (or
//! the server) fails, "Router done!" when its router stops. `Broker::start` itself returns `Ok`
//! either way. This tracing layer turns those three events into [`Signal`]s that `run` waits on,
//! so the broker knows for sure whether it is serving before it says so on stdout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::noise::{Message, BROKER_TARGET, ROUTER_TARGET};

/// A change in rumqttd's state that `run` must react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Signal {
    /// The server named `server` is bound and accepting on `addr`.
    Listening { server: String, addr: String },
    /// The server running on thread `server` stopped, usually because it could not bind.
    ServerFailed { server: String, error: String },
    /// The router thread returned; no message can be routed any more.
    RouterDone { reason: String },
    /// rumqttd skipped `count` messages a subscriber of `filter` had not read yet: its
    /// in-memory log rolled over. They are lost; [`dropped_total`] has the exact sum.
    Dropped { filter: String, count: u64 },
}

/// Messages rumqttd has dropped unread since the process started (exact, unlike the
/// signals, which a full queue may lose).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Messages rumqttd has dropped unread so far.
pub(crate) fn dropped_total() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Reads rumqttd's cursor-jump warning ("Read cursor start jumped from (s, o) to (s2, o2)
/// on FILTER"): offsets count messages, so the jump is the number skipped.
pub(crate) fn cursor_jump(error: &str, from: &str, to: &str) -> Option<(String, u64)> {
    let filter = error.strip_prefix("Read cursor start jumped")?;
    let filter = filter.rsplit_once(" on ").map_or("", |(_, f)| f).to_owned();
    let offset = |cursor: &str| -> Option<u64> {
        let inner = cursor.trim().strip_prefix('(')?.strip_suffix(')')?;
        inner.split(',').nth(1)?.trim().parse().ok()
    };
    let skipped = offset(to)?.checked_sub(offset(from)?)?;
    Some((filter, skipped))
}

/// Which lifecycle event, if any, rumqttd's `message` at `target` announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Listening,
    ServerFailed,
    RouterDone,
}

pub(crate) fn classify(target: &str, message: &str) -> Option<Kind> {
    match (target, message) {
        (BROKER_TARGET, "Listening for remote connections") => Some(Kind::Listening),
        (BROKER_TARGET, m) if m.starts_with("Server error - ") => Some(Kind::ServerFailed),
        (ROUTER_TARGET, "Router done!") => Some(Kind::RouterDone),
        _ => None,
    }
}

static WATCHERS: Mutex<Vec<mpsc::Sender<Signal>>> = Mutex::new(Vec::new());
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// True once [`layer`] has been built (and, presumably, installed).
pub(crate) fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// Starts receiving every [`Signal`] from now on. Signals are rare: a small bounded queue.
pub(crate) fn watch() -> mpsc::Receiver<Signal> {
    let (tx, rx) = mpsc::channel(16);
    let mut watchers = WATCHERS.lock().unwrap_or_else(PoisonError::into_inner);
    watchers.retain(|w| !w.is_closed());
    watchers.push(tx);
    rx
}

fn publish(signal: Signal) {
    let mut watchers = WATCHERS.lock().unwrap_or_else(PoisonError::into_inner);
    watchers.retain(|w| !w.is_closed());
    for w in watchers.iter() {
        let _ = w.try_send(signal.clone());
    }
}

/// The tracing layer through which [`crate::start`] learns whether rumqttd listens, failed or
/// lost its router. It sees rumqttd's INFO-and-above events whatever `RUST_LOG` says, so
/// readiness never depends on the log level. [`crate::logging::init`] installs it; a program
/// with its own subscriber must add it before calling [`crate::start`] or [`crate::run`].
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    INSTALLED.store(true, Ordering::Release);
    let filter = filter_fn(|meta| {
        meta.is_event()
            && *meta.level() <= Level::INFO
            && (meta.target() == BROKER_TARGET || meta.target() == ROUTER_TARGET)
    })
    .with_max_level_hint(LevelFilter::INFO);
    LifecycleLayer.with_filter(filter)
}

struct LifecycleLayer;

impl<S: Subscriber> Layer<S> for LifecycleLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let target = event.metadata().target();
        if target == ROUTER_TARGET && *event.metadata().level() == Level::WARN {
            let mut fields = Fields::default();
            event.record(&mut fields);
            if let Some((filter, count)) =
                cursor_jump(&fields.error, &fields.request_cursor, &fields.start_cursor)
            {
                DROPPED.fetch_add(count, Ordering::Relaxed);
                publish(Signal::Dropped { filter, count });
            }
            return;
        }
        let Some(kind) = Message::of(event)
            .as_str()
            .and_then(|m| classify(target, m))
        else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let signal = match kind {
            Kind::Listening => Signal::Listening {
                server: fields.config,
                addr: fields.listen_addr,
            },
            // rumqttd logs this from the server's own thread, which bears the server's name.
            Kind::ServerFailed => Signal::ServerFailed {
                server: std::thread::current().name().unwrap_or("").to_owned(),
                error: fields.error,
            },
            Kind::RouterDone => Signal::RouterDone {
                reason: fields.reason,
            },
        };
        publish(signal);
    }
}

/// The fields of the three lifecycle events (missing ones stay empty).
#[derive(Default)]
struct Fields {
    config: String,
    listen_addr: String,
    error: String,
    reason: String,
    request_cursor: String,
    start_cursor: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let slot = match field.name() {
            "config" => &mut self.config,
            "listen_addr" => &mut self.listen_addr,
            "error" => &mut self.error,
            "reason" => &mut self.reason,
            "request_cursor" => &mut self.request_cursor,
            "start_cursor" => &mut self.start_cursor,
            _ => return,
        };
        *slot = format!("{value:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_jump_says_how_many_messages_were_skipped() {
        assert_eq!(
            cursor_jump(
                "Read cursor start jumped from (0, 17) to (3, 5017) on sensors/#",
                "(0, 17)",
                "(3, 5017)"
            ),
            Some(("sensors/#".to_owned(), 5000))
        );
        assert_eq!(cursor_jump("something else", "(0, 1)", "(0, 2)"), None);
        assert_eq!(
            cursor_jump("Read cursor start jumped", "garbage", "(0, 2)"),
            None
        );
    }

    #[test]
    fn recognises_the_three_lifecycle_events() {
        assert_eq!(
            classify(BROKER_TARGET, "Listening for remote connections"),
            Some(Kind::Listening)
        );
        assert_eq!(
            classify(BROKER_TARGET, "Server error - V4"),
            Some(Kind::ServerFailed)
        );
        assert_eq!(
            classify(ROUTER_TARGET, "Router done!"),
            Some(Kind::RouterDone)
        );
        assert_eq!(classify(BROKER_TARGET, "accept"), None);
        assert_eq!(classify(ROUTER_TARGET, "Server error - V4"), None);
        assert_eq!(classify("somewhere::else", "Router done!"), None);
    }

    #[test]
    fn signals_reach_every_watcher_and_closed_ones_are_dropped() {
        let mut a = watch();
        let b = watch();
        drop(b);
        let signal = Signal::RouterDone {
            reason: "watcher test".into(),
        };
        publish(signal.clone());
        // Other tests publish too: look for ours among whatever arrived.
        assert!(std::iter::from_fn(|| a.try_recv().ok()).any(|s| s == signal));
    }

    #[test]
    fn the_layer_turns_rumqttd_events_into_signals() {
        use tracing_subscriber::prelude::*;
        let mut rx = watch();
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "rumqttd::server::broker",
                config = "srv-test",
                listen_addr = "127.0.0.1:9".to_string(),
                "Listening for remote connections"
            );
            tracing::info!(target: "rumqttd::server::broker", "accept");
        });
        let got = std::iter::from_fn(|| rx.try_recv().ok())
            .find(|s| matches!(s, Signal::Listening { server, .. } if server == "srv-test"));
        assert_eq!(
            got,
            Some(Signal::Listening {
                server: "srv-test".into(),
                addr: "127.0.0.1:9".into()
            })
        );
    }
}
