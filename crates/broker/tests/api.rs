//! The library API in one story: `start` refuses to run blind, then (with the lifecycle layer
//! installed) starts on a free port, refuses a second broker on the same port, and serves until
//! its shutdown token is cancelled. One test, because the subscriber is process-global.

use mqtt_broker::{BrokerConfig, BrokerError};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::prelude::*;

#[tokio::test]
async fn start_serve_and_stop_through_the_library() {
    let mut config = BrokerConfig::default();
    config.listener.address = "127.0.0.1:0".parse().unwrap();

    let blind = mqtt_broker::start(&config).await;
    assert!(
        matches!(blind, Err(BrokerError::NotObservable)),
        "{blind:?}"
    );

    tracing_subscriber::registry()
        .with(mqtt_broker::lifecycle_layer())
        .init();
    let broker = mqtt_broker::start(&config).await.expect("broker starts");
    let addr = broker.local_addr();
    assert_ne!(addr.port(), 0);
    tokio::net::TcpStream::connect(addr)
        .await
        .expect("it listens");

    let mut same_port = config.clone();
    same_port.listener.address = addr;
    let second = mqtt_broker::start(&same_port).await;
    assert!(
        matches!(second, Err(BrokerError::AddrInUse { .. })),
        "{second:?}"
    );

    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(broker.serve(shutdown.clone()));
    shutdown.cancel();
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), serving).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
}
