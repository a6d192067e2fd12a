//! Retained messages, kept by the broker rather than by rumqttd's router: the router would
//! clear a retained message on any empty publish (MQTT-3.3.1-12 says only a retained one
//! does), and would give every retained topic nobody subscribes to a log of its own. Here a
//! retained PUBLISH replaces its topic's message, an empty retained PUBLISH removes it, and a
//! new subscription gets the matching ones (with the retain flag) right after its SUBACK.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use rumqttd::protocol::matches;

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Retained {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
}

/// The retained message of every topic that has one.
#[derive(Debug, Default)]
pub(crate) struct RetainedStore {
    messages: Mutex<BTreeMap<Vec<u8>, Retained>>,
}

impl RetainedStore {
    /// A retained PUBLISH: keeps it, or with an empty payload, forgets the topic's message.
    pub(crate) fn publish(&self, topic: &Bytes, payload: &Bytes, qos: u8) {
        let mut messages = self.lock();
        if payload.is_empty() {
            messages.remove(&topic[..]);
        } else {
            messages.insert(
                topic.to_vec(),
                Retained {
                    topic: topic.clone(),
                    payload: payload.clone(),
                    qos,
                },
            );
        }
    }

    /// The retained messages a new subscription to `filter` gets (none for `$share`).
    pub(crate) fn matching(&self, filter: &str) -> Vec<Retained> {
        if filter.starts_with("$share/") {
            return Vec::new();
        }
        self.lock()
            .values()
            .filter(|m| std::str::from_utf8(&m.topic).is_ok_and(|t| matches(t, filter)))
            .cloned()
            .collect()
    }

    /// Every retained message, by topic, for a checkpoint.
    pub(crate) fn snapshot(&self) -> BTreeMap<Bytes, (u8, Bytes)> {
        self.lock()
            .values()
            .map(|m| (m.topic.clone(), (m.qos, m.payload.clone())))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Retained>> {
        self.messages.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retained_message_is_replaced_cleared_and_matched() {
        let store = RetainedStore::default();
        let topic = Bytes::from_static(b"sensors/1/status");
        store.publish(&topic, &Bytes::from_static(b"up"), 1);
        store.publish(&topic, &Bytes::from_static(b"down"), 0);
        store.publish(&Bytes::from_static(b"other"), &Bytes::from_static(b"x"), 2);
        let got = store.matching("sensors/+/status");
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].payload.as_ref(), got[0].qos), (&b"down"[..], 0));
        assert_eq!(store.matching("#").len(), 2);
        assert!(store.matching("$share/g/#").is_empty());
        store.publish(&topic, &Bytes::new(), 1);
        assert_eq!(store.matching("#").len(), 1);
    }
}
