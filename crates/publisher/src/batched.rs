//! A device publishing flat out at QoS 1 or 2: one task encodes readings and writes them
//! in batches through rumqttc's own state machine ([`ledger::write_batch`]: packet ids,
//! in-flight table, events), as many as the in-flight window has room for, with one flush
//! per batch; between batches it polls rumqttc's event loop for the acknowledgements.
//!
//! rumqttc's event loop alone takes one request per wake-up from its channel and writes
//! and flushes it on its own, with a timer around each flush: a `writev`, several clock
//! reads and a channel hand-off per reading, most of the publisher's CPU. Batched, the
//! same readings cost one write per batch, and nothing else changes: rumqttc still
//! numbers, tracks and (after a lost connection) hands back every publish, so the ledger,
//! reconnects and failover work exactly as on the paced path ([`crate::queued`]).
//!
//! **Cancellation.** rumqttc's `EventLoop::poll` is not cancel-safe: it awaits the socket
//! inside its branches (a PINGREQ, a PUBREL answering a PUBREC, a collided publish released
//! by an ack), and a packet its state counts as sent but never written waits for an
//! acknowledgement that cannot come. So neither a poll nor a batch is ever dropped
//! half-way while the run goes on: [`Watch::wait`] hands them back unfinished on an
//! interrupt, and they are dropped only when the run stops (the grace period over, or the
//! broker silent for --ack-timeout). Nothing is sent through rumqttc's request channel,
//! so a poll never holds a reading. A write that makes no progress for --connect-timeout
//! is a lost connection, as rumqttc's own flush timeout is: [`ledger::drop_connection`]
//! then moves every publish in flight to the ledger.
//!
//! **Counting.** A reading counts as published when rumqttc's state takes it (its
//! `Outgoing::Publish` event) and as acknowledged on its PUBACK (QoS 1) or PUBCOMP
//! (QoS 2); a resend after a reconnect counts as republished, never as published again.
//! The run ends when every reading was made and each one published was acknowledged.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mqtt_protocol::timing::now_unix_us;
use rumqttc::{Event, Publish, QoS};

use crate::device::{resume, Books, Identity, Job, Outcome, Plan};
use crate::encoder::Encoder;
use crate::ledger;
use crate::packet_ids::PacketIds;
use crate::watch::{Watch, Woke};
use crate::PublisherArgs;

/// A batch is written once the window has room for this share of it (or for everything
/// left to send): fewer, larger writes, while the readings already in flight keep the
/// broker busy.
const BATCH_SHARE: u16 = 8;

/// Publishes according to `plan` (not paced) and counts what the broker acknowledged.
pub(crate) async fn run(job: Job) -> Outcome {
    let Job {
        mut device,
        args,
        plan,
        shared,
        shutdown,
    } = job;
    let qos = args.client.qos;
    let min_batch = (args.inflight / BATCH_SHARE).max(1);
    let mut readings = Readings::new(&args, &device.identity, device.stream_id, plan);
    // The window holds the publisher back whenever it has no room for a batch.
    let mut books = Books::new(&device, args.inflight - min_batch + 1, qos, shared);
    let mut ids = PacketIds::new(args.inflight, qos);
    let mut watch = Watch::new(&args, &shutdown);
    // Publishes to write, oldest first: never-sent ones a lost connection handed back,
    // then readings encoded just before their batch.
    let mut queue: VecDeque<Publish> = VecDeque::with_capacity(usize::from(args.inflight));
    let stall = Duration::from_secs(args.client.broker.connect_timeout);

    'run: loop {
        // What rumqttc queued since (the publishes just written, the rest of an ack batch).
        for event in ledger::queued_events(&mut device.eventloop) {
            if see(&mut books, &mut ids, &event) {
                watch.activity += 1;
            }
        }
        let outcome = &books.outcome;
        let to_send = if watch.in_grace() {
            0
        } else {
            readings.left().saturating_add(queue.len() as u64)
        };
        if to_send == 0 && outcome.confirmed(qos) >= outcome.published {
            break;
        }
        let room = ledger::room(&device.eventloop);
        let lost = if to_send > 0 && room > 0 && room as u64 >= to_send.min(min_batch.into()) {
            readings.fill(&mut queue, room);
            let write = ledger::write_batch(&mut device.eventloop, &mut queue, &mut ids, stall);
            tokio::pin!(write);
            loop {
                match watch.wait(&mut books.outcome, write.as_mut()).await {
                    Woke::Done(Ok(_)) => continue 'run,
                    Woke::Done(Err(e)) => break e,
                    // The batch goes out; nothing new after it.
                    Woke::Interrupted => {}
                    Woke::Stop => break 'run,
                }
            }
        } else {
            let poll = device.eventloop.poll();
            tokio::pin!(poll);
            loop {
                match watch.wait(&mut books.outcome, poll.as_mut()).await {
                    Woke::Done(Ok(event)) => {
                        if see(&mut books, &mut ids, &event) {
                            watch.activity += 1;
                        }
                        continue 'run;
                    }
                    Woke::Done(Err(e)) => break e,
                    // Everything sent is acknowledged: nothing left to wait for.
                    Woke::Interrupted
                        if books.outcome.confirmed(qos) >= books.outcome.published =>
                    {
                        break 'run
                    }
                    Woke::Interrupted => {}
                    Woke::Stop => break 'run,
                }
            }
        };
        ledger::drop_connection(&mut device.eventloop);
        // Events of the lost connection still queued (a publish whose write failed, acks
        // read in the last batch) count under its rules.
        for event in ledger::events_left(&mut device.eventloop, &lost) {
            see(&mut books, &mut ids, &event);
        }
        if !books.rides_out(&lost, &args) {
            break;
        }
        // Publishes never sent go to the front of the queue, for the next batch.
        let resumed = resume(&mut device.eventloop, lost, &args, &shutdown, |fresh| {
            for publish in fresh.into_iter().rev() {
                queue.push_front(publish);
            }
        });
        if !books.resumed(resumed.await) {
            break;
        }
        watch.activity += 1;
    }
    books.close(&device.client, &mut device.eventloop).await
}

/// Counts one event in the books and among the packet ids in flight; returns whether it
/// shows progress.
fn see(books: &mut Books, ids: &mut PacketIds, event: &Event) -> bool {
    ids.see(event);
    books.see(event)
}

/// One device's readings as publishes, made just before their batch goes out.
struct Readings<'a> {
    encoder: Encoder<'a>,
    topic: &'a str,
    qos: QoS,
    /// Readings made so far: the last sequence number used.
    made: u64,
    /// The last sequence number to make (`u64::MAX` when publishing for a duration).
    last: u64,
    end: Option<Instant>,
}

impl<'a> Readings<'a> {
    fn new(args: &'a PublisherArgs, identity: &'a Identity, stream_id: u64, plan: Plan) -> Self {
        Readings {
            encoder: Encoder::new(args, &identity.device_id, stream_id, plan.count),
            topic: &identity.topic,
            qos: mqtt_client::connect::qos(args.client.qos),
            made: 0,
            last: plan.count.unwrap_or(u64::MAX),
            end: plan.end,
        }
    }

    /// Readings still to make.
    fn left(&self) -> u64 {
        self.last - self.made
    }

    /// Tops `queue` up to `up_to` publishes with the next readings, all stamped with the
    /// same send time: they go out in one write, right after. Past the --duration end,
    /// makes no more.
    fn fill(&mut self, queue: &mut VecDeque<Publish>, up_to: usize) {
        let wanted = up_to.saturating_sub(queue.len()) as u64;
        let count = wanted.min(self.left());
        if count == 0 {
            return;
        }
        if self.end.is_some_and(|end| Instant::now() >= end) {
            self.last = self.made;
            return;
        }
        let sent_at_us = now_unix_us();
        for seq in self.made + 1..=self.made + count {
            let payload = self.encoder.encode(seq, sent_at_us, 0);
            queue.push_back(Publish::from_bytes(self.topic, self.qos, payload));
        }
        self.made += count;
    }
}
