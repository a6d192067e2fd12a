//! rumqttd's router logs every registered and closed connection and every subscription at
//! INFO, and a link that leaves twice (a client that sent DISCONNECT, then closed) at ERROR.
//! None of that is an error of the broker, and the broker says what matters about its clients
//! itself. This module recognises that per-connection chatter by target and message and
//! demotes it: it is shown only when DEBUG is enabled for the router's target
//! (`RUST_LOG=rumqttd=debug`), then as one line labelled `DEBUG`. Everything else the router
//! says keeps its level.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;

/// Target of rumqttd's router.
pub(crate) const ROUTER_TARGET: &str = "rumqttd::router::routing";

/// Target of rumqttd's commit-log segments.
pub(crate) const SEGMENTS_TARGET: &str = "rumqttd::segments";

/// True for the router's per-connection events (whatever level rumqttd gave them): a
/// connection registered or closed, a subscription added, a link that was already gone; and
/// its warnings that a read cursor moved to the next segment ("jumped"), which it gives even
/// when nothing was skipped: the broker counts what was really skipped from the offsets of
/// what it forwards, and says so in an ERROR line.
pub(crate) fn is_connection_noise(target: &str, message: &str) -> bool {
    if target == SEGMENTS_TARGET {
        return message.starts_with("given index ") && message.ends_with(", jumping to head");
    }
    target == ROUTER_TARGET
        && (message.starts_with("Read cursor start jumped")
            || matches!(
                message,
                "Connection is already disconnected"
                    | "Client connection registered"
                    | "Disconnecting connection"
            )
            || message.starts_with("Adding subscription on topic ")
            || (message.starts_with("no-connection id ") && message.ends_with(" is already gone")))
}

/// Whether DEBUG is enabled for the router's target, fixed when logging starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ShowNoise {
    pub router: bool,
}

impl ShowNoise {
    fn for_target(self, target: &str) -> bool {
        (target == ROUTER_TARGET || target == SEGMENTS_TARGET) && self.router
    }
}

/// The event's `message` field, copied into a fixed buffer: classifying an event allocates
/// nothing. Longer messages are marked truncated and never match the noise list.
pub(crate) struct Message {
    buf: [u8; 96],
    len: usize,
    truncated: bool,
}

impl Message {
    pub(crate) fn of(event: &Event<'_>) -> Message {
        let mut message = Message {
            buf: [0; 96],
            len: 0,
            truncated: false,
        };
        event.record(&mut message);
        message
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        if self.truncated {
            return None;
        }
        std::str::from_utf8(&self.buf[..self.len]).ok()
    }
}

impl fmt::Write for Message {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            self.truncated = true;
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The text of an event: its `message`, or for the router's cursor warning, which has none,
/// its `error` field.
fn is_text(field: &Field) -> bool {
    matches!(field.name(), "message" | "error")
}

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if is_text(field) && self.len == 0 {
            let _ = self.write_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if is_text(field) && self.len == 0 {
            let _ = write!(self, "{value:?}");
        }
    }
}

fn is_rumqttd(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with("rumqttd::")
}

/// True if `event` is rumqttd connection noise.
pub(crate) fn event_is_noise(event: &Event<'_>) -> bool {
    let meta = event.metadata();
    is_rumqttd(meta)
        && Message::of(event)
            .as_str()
            .is_some_and(|m| is_connection_noise(meta.target(), m))
}

/// Per-layer filter for the stderr output: drops connection noise unless DEBUG is enabled for
/// its target. Combined with the `RUST_LOG` filter, which still decides everything else.
pub(crate) struct NoiseFilter {
    pub show: ShowNoise,
}

impl<S> Filter<S> for NoiseFilter {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    /// No level restriction of its own: without this hint, combining it with the `RUST_LOG`
    /// filter would lose that filter's hint, and every disabled `debug!` would cost a check.
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let target = event.metadata().target();
        self.show.for_target(target) || !event_is_noise(event)
    }
}

/// The usual one-line format, except that connection noise is written with the level `DEBUG`
/// (it is only shown when DEBUG is enabled, so that is what it is).
pub(crate) struct NoiseFormat {
    inner: format::Format,
}

impl NoiseFormat {
    pub(crate) fn new() -> Self {
        NoiseFormat {
            inner: format::Format::default(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for NoiseFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if !event_is_noise(event) {
            return self.inner.format_event(ctx, writer, event);
        }
        SystemTime.format_time(&mut writer)?;
        if writer.has_ansi_escapes() {
            writer.write_str(" \x1b[34mDEBUG\x1b[0m ")?;
        } else {
            writer.write_str(" DEBUG ")?;
        }
        // Spans as the default format writes them: `outer{a=1}:inner:` then a space.
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
                writer.write_char(':')?;
                seen = true;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        write!(writer, "{}: ", event.metadata().target())?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_chatter_is_noise() {
        for m in [
            "no-connection id 17 is already gone",
            "Connection is already disconnected",
            "Client connection registered",
            "Disconnecting connection",
            "Adding subscription on topic sensors/#",
            "Read cursor start jumped from (3, 236) to (4, 236) on loop/#",
        ] {
            assert!(is_connection_noise(ROUTER_TARGET, m), "{m}");
        }
        assert!(is_connection_noise(
            SEGMENTS_TARGET,
            "given index 3 less than head 236, jumping to head"
        ));
    }

    #[test]
    fn real_errors_are_not_noise() {
        for m in [
            "Router done!",
            "no space for new connection",
            "Failed to append to commitlog",
            "Duplicate client_id, dropping previous connection with connection_id: 3",
            "Unsolicited/ooo ack received for pkid 7",
        ] {
            assert!(!is_connection_noise(ROUTER_TARGET, m), "{m}");
        }
        // The right words from the wrong place are not noise either.
        assert!(!is_connection_noise(
            "rumqttd::link::bridge",
            "Disconnecting connection"
        ));
    }

    #[test]
    fn message_buffer_truncates_instead_of_matching() {
        let mut m = Message {
            buf: [0; 96],
            len: 0,
            truncated: false,
        };
        let _ = m.write_str("no-connection id ");
        let _ = m.write_str(&"9".repeat(100));
        let _ = m.write_str(" is already gone");
        assert_eq!(m.as_str(), None);
    }

    #[test]
    fn show_flags_are_for_the_router_only() {
        let show = ShowNoise { router: true };
        assert!(show.for_target(ROUTER_TARGET));
        assert!(!show.for_target("rumqttd::server::tls"));
        assert!(!ShowNoise::default().for_target(ROUTER_TARGET));
    }
}
