//! The direct path: a message for a clean-session subscriber that has everything before it
//! goes to that subscriber's connection at once, on the network thread, instead of waiting
//! for the copy the router sends. That copy costs a hand-off to the router's thread and one
//! back, which at paced rates is most of the broker's latency (README, Latency).
//!
//! The router still logs every message and still forwards it. Flow control knows the offset
//! each message gets in each log and where each reader stands (`flow::Flow::send_direct`);
//! the connection takes a direct message only if it expects exactly that offset next and
//! could send it now (`delivery::Delivery::direct_qos`, `Window::takes_direct`), and then
//! recognises the router's copy by its offset and only acknowledges it to the router. A
//! direct message it cannot take is dropped: the router's copy goes out as always. So the
//! direct path only ever sends a message earlier, never a second time, and nothing the
//! router does not also hold.

use tokio::sync::mpsc;

use crate::ingest::Message;

/// A message a caught-up subscriber may take before the router's copy comes.
#[derive(Debug)]
pub(crate) struct Direct {
    /// Its offset in the subscriber's log.
    pub offset: u64,
    pub message: Message,
}

/// Where direct messages for one connection go. At most one per log is ever on its way
/// (the next needs the reader to have moved past it), so the channel stays short.
pub(crate) type DirectTx = mpsc::UnboundedSender<Direct>;
pub(crate) type DirectRx = mpsc::UnboundedReceiver<Direct>;

pub(crate) fn channel() -> (DirectTx, DirectRx) {
    mpsc::unbounded_channel()
}
