//! `mqtt-baseline`: the stack the pipeline wraps, measured as plainly as it comes, so that
//! `scripts/bench` can put our broker and clients beside it in the same run.
//!
//! - `broker`: rumqttd 0.20's own broker (its network layer and router), with the router
//!   settings of our `config/broker.toml` defaults;
//! - `publish` / `subscribe`: rumqttc clients that publish and count fixed-size QoS 1 messages
//!   with a given in-flight window, and verify nothing beyond the count.
//!
//! Each client prints one JSON object on stdout: what it did and how fast.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use mqtt_protocol::report::BaselineReport as Report;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// rumqttd's own broker on ADDR (port 0: a free port); prints `listening on ADDR` once it
    /// accepts connections.
    Broker {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// rumqttd's `max_segment_size`, in bytes.
        #[arg(long, default_value_t = 100 * 1024 * 1024)]
        segment_size: usize,
        /// rumqttd's `max_segment_count`.
        #[arg(long, default_value_t = 10)]
        segment_count: usize,
    },
    /// Publishes COUNT QoS 1 messages of SIZE bytes as fast as the window allows.
    Publish {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        #[arg(long, default_value_t = 500)]
        inflight: u16,
        #[arg(long, default_value_t = 61)]
        size: usize,
        #[arg(long, default_value = "sensors/data")]
        topic: String,
    },
    /// Subscribes at QoS 1 and counts COUNT messages (prints `subscribed` on stderr first).
    Subscribe {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        #[arg(long, default_value = "sensors/#")]
        topic: String,
        /// Seconds without a message (after the first) before giving up.
        #[arg(long, default_value_t = 10)]
        idle_timeout: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Broker {
            listen,
            segment_size,
            segment_count,
        } => broker(listen, segment_size, segment_count),
        Command::Publish {
            port,
            count,
            inflight,
            size,
            topic,
        } => client(publish(port, count, inflight, size, topic)),
        Command::Subscribe {
            port,
            count,
            topic,
            idle_timeout,
        } => client(subscribe(
            port,
            count,
            topic,
            Duration::from_secs(idle_timeout),
        )),
    }
}

fn client(run: impl std::future::Future<Output = anyhow::Result<Report>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run)?;
    println!("{}", serde_json::to_string(&report)?);
    if !report.complete {
        bail!("only {} of {} messages", report.done, report.count);
    }
    Ok(())
}

fn broker(listen: SocketAddr, segment_size: usize, segment_count: usize) -> anyhow::Result<()> {
    // rumqttd binds inside its own thread and does not say which port it got: pick a free one.
    let addr = TcpListener::bind(listen)
        .and_then(|l| l.local_addr())
        .with_context(|| format!("cannot listen on {listen}"))?;
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: 256 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "baseline".to_owned(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_064,
            max_outgoing_packet_count: 200,
            max_segment_size: segment_size,
            max_segment_count: segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: rumqttd::Strategy::RoundRobin,
        },
        v4: Some([("baseline".to_owned(), server)].into_iter().collect()),
        ..Default::default()
    };
    std::thread::spawn(move || {
        if let Err(e) = rumqttd::Broker::new(config).start() {
            eprintln!("error: rumqttd stopped: {e}");
            std::process::exit(1);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("rumqttd did not listen on {addr} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("listening on {addr}");
    loop {
        std::thread::park();
    }
}

async fn publish(
    port: u16,
    count: u64,
    inflight: u16,
    size: usize,
    topic: String,
) -> anyhow::Result<Report> {
    let mut options = MqttOptions::new(
        format!("baseline-pub-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    options
        .set_inflight(inflight)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, usize::from(inflight));
    let payload = vec![0x5Au8; size];
    let producer = tokio::spawn(async move {
        for _ in 0..count {
            client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
                .await?;
        }
        Ok::<_, rumqttc::ClientError>(client)
    });
    let mut started = None;
    let mut acked = 0;
    while acked < count {
        match eventloop.poll().await.context("publisher connection")? {
            Event::Incoming(Incoming::ConnAck(_)) => started = Some(Instant::now()),
            Event::Incoming(Incoming::PubAck(_)) => acked += 1,
            _ => {}
        }
    }
    let elapsed = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let client = producer.await??;
    let _ = client.disconnect().await;
    Ok(Report {
        kind: "baseline-publisher".to_owned(),
        count,
        done: acked,
        elapsed_s: elapsed,
        msgs_per_s: acked as f64 / elapsed.max(1e-9),
        complete: acked == count,
    })
}

async fn subscribe(port: u16, count: u64, topic: String, idle: Duration) -> anyhow::Result<Report> {
    let mut options = MqttOptions::new(
        format!("baseline-sub-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe(topic, QoS::AtLeastOnce).await?;
    let mut first = None;
    let mut received = 0;
    while received < count {
        let event = match first {
            None => eventloop.poll().await,
            Some(_) => match tokio::time::timeout(idle, eventloop.poll()).await {
                Ok(event) => event,
                Err(_) => break,
            },
        };
        match event.context("subscriber connection")? {
            Event::Incoming(Incoming::SubAck(_)) => eprintln!("subscribed"),
            Event::Incoming(Incoming::Publish(_)) => {
                first.get_or_insert_with(Instant::now);
                received += 1;
            }
            _ => {}
        }
    }
    let elapsed = first.map_or(0.0, |s| s.elapsed().as_secs_f64());
    Ok(Report {
        kind: "baseline-subscriber".to_owned(),
        count,
        done: received,
        elapsed_s: elapsed,
        msgs_per_s: received as f64 / elapsed.max(1e-9),
        complete: received == count,
    })
}
