//! Metrics in Prometheus' text format at `http://[metrics] listen/metrics`, served by
//! `metrics-exporter-prometheus` (no HTTP of ours). The broker counts in relaxed atomics as it
//! goes (`hub::Stats`, once per batch); once a second they are copied into the exporter, so a
//! scrape is at most a second behind, and the hot paths never touch the exporter.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;

use crate::error::BrokerError;
use crate::hub::{Hub, Refusal};
use crate::ticker::Ticker;

/// How often the counters are copied into the exporter.
const EVERY: Duration = Duration::from_secs(1);

/// Starts serving `/metrics` on `addr` (this process's only metrics recorder) and the task
/// that keeps it current until `stop`.
pub(crate) fn serve(
    hub: Arc<Hub>,
    addr: SocketAddr,
    stop: CancellationToken,
) -> Result<(), BrokerError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| BrokerError::Metrics {
            addr,
            error: e.to_string(),
        })?;
    describe();
    update(&hub);
    tokio::spawn(async move {
        let mut ticker = Ticker::new(EVERY, stop);
        while ticker.next().await {
            update(&hub);
        }
    });
    Ok(())
}

fn describe() {
    describe_gauge!("mqtt_connections", "Clients connected now.");
    describe_counter!(
        "mqtt_connections_total",
        "Clients accepted (CONNACK 0) since start."
    );
    describe_counter!(
        "mqtt_connections_refused_total",
        "Connections refused, by reason: the CONNACK code sent, or `handshake` for those closed before one."
    );
    describe_counter!(
        "mqtt_messages_received_total",
        "PUBLISH packets received from clients."
    );
    describe_counter!(
        "mqtt_messages_sent_total",
        "PUBLISH packets sent to clients."
    );
    describe_counter!(
        "mqtt_messages_sent_direct_total",
        "Of the PUBLISH packets sent, those a caught-up clean-session subscriber got directly, before rumqttd's router forwarded its copy."
    );
    describe_counter!(
        "mqtt_bytes_received_total",
        Unit::Bytes,
        "Bytes read from client connections."
    );
    describe_counter!(
        "mqtt_bytes_sent_total",
        Unit::Bytes,
        "Bytes written to client connections."
    );
    describe_counter!(
        "mqtt_messages_dropped_total",
        "Messages lost, by reason: `log_rolled_over` (the router dropped them before a subscriber read them), `qos0_held` (QoS 0 publishes dropped while flow control held their publisher)."
    );
    describe_counter!(
        "mqtt_messages_refused_total",
        "Messages accepted and delivered to no one, by reason: `reserved_topic` (a $ topic), `acl_write` (the publisher may not write it), `acl_read` (withheld from a subscriber that may not read it, per subscriber)."
    );
    describe_counter!(
        "mqtt_flow_held_seconds_total",
        Unit::Seconds,
        "Time publishers were held back by flow control, summed over publishers."
    );
    describe_gauge!(
        "mqtt_flow_lag_messages",
        "Messages the slowest subscriber of each subscription filter has yet to read."
    );
    describe_gauge!(
        "mqtt_stored_bytes",
        Unit::Bytes,
        "Bytes the write-ahead log takes on disk (only with [storage] dir)."
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory of the broker process."
    );
}

/// Copies the broker's counters into the exporter.
fn update(hub: &Hub) {
    let s = &hub.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    gauge!("mqtt_connections").set(hub.connected() as f64);
    counter!("mqtt_connections_total").absolute(load(&s.connections_total));
    for why in Refusal::ALL {
        counter!("mqtt_connections_refused_total", "reason" => why.label())
            .absolute(load(&s.refused[why as usize]));
    }
    counter!("mqtt_messages_received_total").absolute(load(&s.messages_received));
    counter!("mqtt_messages_sent_total").absolute(load(&s.messages_sent));
    counter!("mqtt_messages_sent_direct_total").absolute(load(&s.messages_direct));
    counter!("mqtt_bytes_received_total").absolute(load(&s.bytes_received));
    counter!("mqtt_bytes_sent_total").absolute(load(&s.bytes_sent));
    counter!("mqtt_messages_dropped_total", "reason" => "log_rolled_over").absolute(hub.dropped());
    counter!("mqtt_messages_dropped_total", "reason" => "qos0_held")
        .absolute(load(&s.qos0_dropped));
    counter!("mqtt_messages_refused_total", "reason" => "reserved_topic")
        .absolute(load(&s.reserved_topic));
    counter!("mqtt_messages_refused_total", "reason" => "acl_write")
        .absolute(load(&s.denied_publish));
    counter!("mqtt_messages_refused_total", "reason" => "acl_read").absolute(load(&s.denied_read));
    // The exporter's counters are whole numbers: milliseconds would need another name.
    if let Some(storage) = &hub.storage {
        gauge!("mqtt_stored_bytes").set(storage.stored_bytes() as f64);
    }
    counter!("mqtt_flow_held_seconds_total").absolute(hub.held().as_secs());
    for (filter, lag) in hub.lock_flow().lags() {
        gauge!("mqtt_flow_lag_messages", "filter" => filter).set(lag as f64);
    }
    if let Some(bytes) = resident_bytes() {
        gauge!("process_resident_memory_bytes").set(bytes as f64);
    }
}

/// This process's resident memory now (`/proc/self/statm`).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
