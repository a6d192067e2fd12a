//! rumqttd's router runs on a std thread of its own ("router-0"). If it panics, rumqttd
//! carries on accepting clients it can no longer serve: a zombie broker. This panic hook makes
//! a router panic fatal instead, after the usual panic message.

use std::sync::Once;

use mqtt_protocol::exit;

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
