//! A device driven through rumqttc's request channel, for paced runs (`--rate`) and QoS 0:
//! a *producer* task encodes each reading when it is due and hands it to the bounded
//! channel (which blocks it while the window is full), and the *driver* polls the event
//! loop, which writes one request per wake-up, counting what went out and what came back.
//! A paced reading goes out the moment it is due, alone, which is what pacing asks for.
//!
//! The poll is never dropped half-way while the run goes on ([`Watch::wait`]): rumqttc's
//! `poll` is not cancel-safe, and one dropped while it writes a reading taken from the
//! channel would leave that reading counted as sent but never written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mqtt_protocol::timing::now_unix_us;
use rumqttc::{AsyncClient, Publish};
use tokio_util::sync::CancellationToken;

use crate::device::{resume, Books, Identity, Job, Outcome, Plan};
use crate::encoder::Encoder;
use crate::ledger;
use crate::pacing::Pacer;
use crate::watch::{Watch, Woke};
use crate::PublisherArgs;

/// Publishes according to `plan` and counts what the broker acknowledged.
pub(crate) async fn run(mut job: Job) -> Outcome {
    let handed_over = Arc::new(AtomicU64::new(0));
    let stop_producing = job.shutdown.child_token();
    let producer = tokio::spawn(produce(
        job.device.client.clone(),
        job.args.clone(),
        job.device.identity.clone(),
        job.device.stream_id,
        job.plan,
        handed_over.clone(),
        stop_producing.clone(),
    ));

    let qos = job.args.client.qos;
    let mut books = Books::new(&job.device, job.args.inflight, qos, job.shared);
    let mut watch = Watch::new(&job.args, &job.shutdown);

    loop {
        // What was handed over, or went out: whichever the driver has seen more of.
        let target = handed_over
            .load(Ordering::Acquire)
            .max(books.outcome.published);
        if books.outcome.confirmed(qos) >= target && producer.is_finished() {
            break;
        }
        let polled = {
            let poll = job.device.eventloop.poll();
            tokio::pin!(poll);
            loop {
                match watch.wait(&mut books.outcome, poll.as_mut()).await {
                    Woke::Done(polled) => break Some(polled),
                    // The producer stops (its token is a child of the interrupt's); what it
                    // handed over still goes out.
                    Woke::Interrupted => {}
                    Woke::Stop => break None,
                }
            }
        };
        match polled {
            None => break,
            Some(Ok(event)) => {
                if books.see(&event) {
                    watch.activity += 1;
                }
            }
            Some(Err(e)) => {
                // Events of the lost connection still queued (a publish whose write
                // failed, acks read in the last batch) count under its rules.
                for event in ledger::events_left(&mut job.device.eventloop, &e) {
                    books.see(&event);
                }
                if !books.rides_out(&e, &job.args) {
                    break;
                }
                // Publishes never sent go back through the request channel on a task of
                // their own, under rumqttc's flow control.
                let (client, stop) = (&job.device.client, &stop_producing);
                let resumed = resume(
                    &mut job.device.eventloop,
                    e,
                    &job.args,
                    &job.shutdown,
                    |fresh| {
                        tokio::spawn(republish(client.clone(), fresh, stop.clone()));
                    },
                );
                if !books.resumed(resumed.await) {
                    break;
                }
                watch.activity += 1;
            }
        }
    }
    stop_producing.cancel();
    books
        .close(&job.device.client, &mut job.device.eventloop)
        .await
}

/// Hands never-sent publishes back to rumqttc's request channel, in order, waiting for
/// room as the producer does.
async fn republish(client: AsyncClient, fresh: Vec<Publish>, stop: CancellationToken) {
    for p in fresh {
        tokio::select! {
            _ = stop.cancelled() => return,
            sent = client.publish_bytes(p.topic.clone(), p.qos, p.retain, p.payload) => {
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}

/// Encodes and hands over readings until the plan is done or told to stop.
async fn produce(
    client: AsyncClient,
    args: Arc<PublisherArgs>,
    identity: Identity,
    stream_id: u64,
    plan: Plan,
    handed_over: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let qos = mqtt_client::connect::qos(args.client.qos);
    let mut encoder = Encoder::new(&args, &identity.device_id, stream_id, plan.count);
    let last = match (plan.count, plan.schedule, plan.end) {
        (Some(count), _, _) => count,
        // Paced for a duration: exactly the readings due before the end.
        (None, Some(schedule), Some(end)) => schedule.due_before(end),
        (None, _, _) => u64::MAX,
    };
    // A timer only for a paced run (QoS 0 flat out comes this way too).
    let mut paced = plan.schedule.map(|schedule| (schedule, Pacer::new()));
    for seq in 1..=last {
        if stop.is_cancelled() {
            return;
        }
        let (sent_at_us, lateness_us) = match &mut paced {
            Some((schedule, pacer)) => {
                tokio::select! {
                    () = pacer.until(schedule.due(seq)) => {}
                    () = stop.cancelled() => return,
                }
                let intended = schedule.intended_unix_us(seq);
                (intended, now_unix_us().saturating_sub(intended))
            }
            None => {
                if plan.end.is_some_and(|end| Instant::now() >= end) {
                    return;
                }
                (now_unix_us(), 0)
            }
        };
        let payload = encoder.encode(seq, sent_at_us, lateness_us);
        // Not raced against `stop`: a send abandoned half-way may still reach the event
        // loop, and then it would go out uncounted. The driver keeps polling meanwhile.
        if client
            .publish_bytes(identity.topic.as_str(), qos, false, payload)
            .await
            .is_err()
        {
            return; // The event loop is gone; the driver reports why.
        }
        handed_over.store(seq, Ordering::Release);
    }
}
