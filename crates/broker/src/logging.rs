//! Logging for the broker: one human-readable line per event on stderr (no colour unless
//! stderr is a terminal), filtered by `RUST_LOG` (default `info`). On top of the usual
//! set-up it demotes rumqttd's per-connection chatter (see `noise`) and leaves rumqttd's
//! per-packet spans out.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;
use tracing::Level;
use tracing::Metadata;
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

use crate::noise::{NoiseFilter, NoiseFormat, ShowNoise, ROUTER_TARGET};

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset or empty;
/// an unparsable `RUST_LOG` falls back to it with a warning. Does nothing if a global
/// subscriber is already installed.
pub fn init(default_filter: &str) {
    let mut rejected = None;
    let spec = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(_) => spec,
            Err(e) => {
                rejected = Some(format!(
                    "ignoring RUST_LOG={spec:?} ({e}); using {default_filter:?}"
                ));
                default_filter.to_owned()
            }
        },
        _ => default_filter.to_owned(),
    };
    let show = noise_shown(&spec);
    // rumqttd opens a span per packet; formatting them for this layer cost a quarter of the
    // broker's CPU (profiled). Its events still print; the spans come back when rumqttd's
    // debug output is asked for, where they are context worth having.
    let keep_spans = show.router;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .event_format(NoiseFormat::new())
        .with_filter(
            EnvFilter::new(&spec).and(NoiseFilter { show }).and(
                filter_fn(move |meta| keep_spans || !is_rumqttd_span(meta))
                    .with_max_level_hint(LevelFilter::TRACE),
            ),
        );
    let installed = tracing_subscriber::registry().with(stderr).try_init();
    if let (Ok(()), Some(warning)) = (installed, rejected) {
        tracing::warn!("{warning}");
    }
}

fn is_rumqttd_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.target().starts_with("rumqttd")
}

/// Whether `spec` (an `RUST_LOG` value) enables DEBUG for rumqttd's noisy router: asked of
/// a throw-away subscriber, so the answer is exactly `EnvFilter`'s own.
pub(crate) fn noise_shown(spec: &str) -> ShowNoise {
    let probe = tracing_subscriber::registry().with(EnvFilter::new(spec));
    tracing::subscriber::with_default(probe, || ShowNoise {
        router: tracing::enabled!(target: ROUTER_TARGET, Level::DEBUG),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_shown_only_where_debug_is_enabled() {
        let none = ShowNoise::default();
        let shown = ShowNoise { router: true };
        assert_eq!(noise_shown("info"), none);
        assert_eq!(noise_shown("error"), none);
        assert_eq!(noise_shown("rumqttd=info"), none);
        assert_eq!(noise_shown("debug"), shown);
        assert_eq!(noise_shown("info,rumqttd=debug"), shown);
        assert_eq!(noise_shown("trace"), shown);
        assert_eq!(noise_shown("info,rumqttd::router=debug"), shown);
        assert_eq!(noise_shown("rumqttd::server::broker=debug"), none);
    }
}
