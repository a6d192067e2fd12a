//! Ctrl-C and SIGTERM lead to the same orderly path: a cancelled token that every
//! long-running loop watches, so that work stops, pending output is flushed and the
//! summary still gets printed.

use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled on the first SIGINT or SIGTERM.
///
/// Must be called from within a tokio runtime. A second signal is left to the default
/// handler only in the sense that it cancels nothing new: callers bound their own
/// grace periods.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::debug!("signal received, shutting down");
        cancel.cancel();
    });
    token
}

/// Resolves on the next SIGINT or SIGTERM (for a second signal that cuts a grace
/// period short).
pub async fn signalled() {
    wait_for_signal().await
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
