//! The library API in one story: `start` binds a free port and serves, refuses a second broker
//! on the same port, and serves until its shutdown token is cancelled.

use mqtt_broker::{BrokerConfig, BrokerError};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_serve_and_stop_through_the_library() {
    let mut config = BrokerConfig::default();
    config.listener.address = "127.0.0.1:0".parse().unwrap();

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
