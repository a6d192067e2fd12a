//! What the records hold: the write-ahead log's entries (each with its record id) and the
//! state file's (a checkpoint of retained messages and persistent sessions).

use super::record::{put16, Body};

/// One write-ahead log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry<'a> {
    /// An accepted PUBLISH: a QoS 1/2 one that went to the router, or a retained one.
    Publish {
        qos: u8,
        retain: bool,
        /// It went to the router (some subscription matched): a replay candidate.
        routed: bool,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    /// A persistent session subscribed: it reads the publishes after this record.
    Subscribe {
        client: &'a str,
        filter: &'a str,
        qos: u8,
    },
    Unsubscribe {
        client: &'a str,
        filter: &'a str,
    },
    /// A persistent session ended (a clean session took its client id).
    Forget {
        client: &'a str,
    },
}

const PUBLISH: u8 = 1;
const SUBSCRIBE: u8 = 2;
const UNSUBSCRIBE: u8 = 3;
const FORGET: u8 = 4;

impl Entry<'_> {
    /// Writes `id` and the entry as a record body.
    pub(crate) fn encode(&self, id: u64, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&id.to_le_bytes());
        match *self {
            Entry::Publish {
                qos,
                retain,
                routed,
                topic,
                payload,
            } => {
                buf.push(PUBLISH);
                buf.push(qos | (u8::from(retain) << 2) | (u8::from(routed) << 3));
                put16(buf, topic);
                buf.extend_from_slice(payload);
            }
            Entry::Subscribe {
                client,
                filter,
                qos,
            } => {
                buf.push(SUBSCRIBE);
                buf.push(qos);
                put16(buf, client.as_bytes());
                put16(buf, filter.as_bytes());
            }
            Entry::Unsubscribe { client, filter } => {
                buf.push(UNSUBSCRIBE);
                put16(buf, client.as_bytes());
                put16(buf, filter.as_bytes());
            }
            Entry::Forget { client } => {
                buf.push(FORGET);
                put16(buf, client.as_bytes());
            }
        }
    }

    /// Reads a record body written by [`Entry::encode`]; `None` if it does not parse.
    pub(crate) fn decode(body: &[u8]) -> Option<(u64, Entry<'_>)> {
        let mut b = Body(body);
        let id = b.u64()?;
        let entry = match b.u8()? {
            PUBLISH => {
                let flags = b.u8()?;
                let topic = b.bytes16()?;
                Entry::Publish {
                    qos: flags & 0x03,
                    retain: flags & 0x04 != 0,
                    routed: flags & 0x08 != 0,
                    topic,
                    payload: b.rest(),
                }
            }
            SUBSCRIBE => {
                let qos = b.u8()?;
                Entry::Subscribe {
                    client: b.str16()?,
                    filter: b.str16()?,
                    qos,
                }
            }
            UNSUBSCRIBE => Entry::Unsubscribe {
                client: b.str16()?,
                filter: b.str16()?,
            },
            FORGET => Entry::Forget { client: b.str16()? },
            _ => return None,
        };
        Some((id, entry))
    }
}

/// One persistent session's subscription, as checkpointed: its QoS and the first record id
/// it has not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub qos: u8,
    pub ack_from: u64,
}

/// One state-file entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StateEntry<'a> {
    /// The checkpoint covers every log record before `next_id`.
    Meta { next_id: u64 },
    Retained {
        qos: u8,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    Session {
        client: &'a str,
        subscriptions: Vec<(&'a str, Subscription)>,
    },
}

const META: u8 = 1;
const RETAINED: u8 = 2;
const SESSION: u8 = 3;

impl StateEntry<'_> {
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            StateEntry::Meta { next_id } => {
                buf.push(META);
                buf.extend_from_slice(&next_id.to_le_bytes());
            }
            StateEntry::Retained {
                qos,
                topic,
                payload,
            } => {
                buf.push(RETAINED);
                buf.push(*qos);
                put16(buf, topic);
                buf.extend_from_slice(payload);
            }
            StateEntry::Session {
                client,
                subscriptions,
            } => {
                buf.push(SESSION);
                put16(buf, client.as_bytes());
                buf.extend_from_slice(&(subscriptions.len() as u16).to_le_bytes());
                for (filter, sub) in subscriptions {
                    buf.push(sub.qos);
                    buf.extend_from_slice(&sub.ack_from.to_le_bytes());
                    put16(buf, filter.as_bytes());
                }
            }
        }
    }

    pub(crate) fn decode(body: &[u8]) -> Option<StateEntry<'_>> {
        let mut b = Body(body);
        Some(match b.u8()? {
            META => StateEntry::Meta { next_id: b.u64()? },
            RETAINED => {
                let qos = b.u8()?;
                let topic = b.bytes16()?;
                StateEntry::Retained {
                    qos,
                    topic,
                    payload: b.rest(),
                }
            }
            SESSION => {
                let client = b.str16()?;
                let n = b.u16()?;
                let mut subscriptions = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let qos = b.u8()?;
                    let ack_from = b.u64()?;
                    subscriptions.push((b.str16()?, Subscription { qos, ack_from }));
                }
                StateEntry::Session {
                    client,
                    subscriptions,
                }
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_as_written() {
        let entries = [
            Entry::Publish {
                qos: 1,
                retain: true,
                routed: true,
                topic: b"sensors/data",
                payload: b"\x00\x01reading",
            },
            Entry::Subscribe {
                client: "sub-1",
                filter: "sensors/#",
                qos: 1,
            },
            Entry::Unsubscribe {
                client: "sub-1",
                filter: "sensors/#",
            },
            Entry::Forget { client: "sub-1" },
        ];
        for (id, entry) in entries.iter().enumerate() {
            let mut buf = Vec::new();
            entry.encode(id as u64 + 7, &mut buf);
            assert_eq!(Entry::decode(&buf), Some((id as u64 + 7, entry.clone())));
        }
        let states = [
            StateEntry::Meta { next_id: 42 },
            StateEntry::Retained {
                qos: 2,
                topic: b"a/b",
                payload: b"up",
            },
            StateEntry::Session {
                client: "c",
                subscriptions: vec![(
                    "s/#",
                    Subscription {
                        qos: 1,
                        ack_from: 9,
                    },
                )],
            },
        ];
        for state in &states {
            let mut buf = Vec::new();
            state.encode(&mut buf);
            assert_eq!(StateEntry::decode(&buf).as_ref(), Some(state));
        }
        assert_eq!(Entry::decode(&[0; 9]), None);
    }
}
