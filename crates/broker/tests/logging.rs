//! The broker's logging must not cost rumqttd's hot loops anything at the default level: the
//! global level hint stays at INFO, so disabled `debug!`/`trace!` calls are skipped at once.
//! One test in its own binary, because the subscriber is process-global.

use tracing::level_filters::LevelFilter;

#[test]
fn default_logging_keeps_the_info_level_hint() {
    std::env::remove_var("RUST_LOG");
    mqtt_broker::logging::init("info");
    assert_eq!(LevelFilter::current(), LevelFilter::INFO);
    assert!(!tracing::enabled!(target: "rumqttd::router::routing", tracing::Level::DEBUG));
    assert!(tracing::enabled!(target: "rumqttd::server::broker", tracing::Level::ERROR));
}
