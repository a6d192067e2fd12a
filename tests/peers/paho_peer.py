"""Broker checks with Python paho-mqtt (2.x), for tests/interop.rs.

Each check talks MQTT 3.1.1 to the broker at 127.0.0.1:PORT, waits for each step with a
bounded timeout, and prints ONE line of JSON on stdout saying what it observed. It
judges nothing: the Rust test asserts on that line, per broker.

    python paho_peer.py session PORT [COUNT]    persistent session (clean_session=False)
    python paho_peer.py unsubscribe PORT        messages stop after UNSUBACK
    python paho_peer.py keepalive0 PORT         CONNECT with keep-alive 0: CONNACK or not?
    python paho_peer.py wspub PORT COUNT        COUNT QoS 1 readings (the demo's JSON) over
                                                WebSockets (ws://127.0.0.1:PORT/mqtt)
"""

import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt

STEP_TIMEOUT = 5.0


def client(client_id, clean_session=True):
    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )


class Peer:
    """A paho client on its own network thread, recording what the broker sends it."""

    def __init__(self, port, client_id, clean_session=True, keepalive=30):
        self.c = client(client_id, clean_session)
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.subscribed = threading.Event()
        self.unsubscribed = threading.Event()
        self.session_present = None
        self.accepted = None
        self.granted = None
        self.messages = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=keepalive)
        self.c.loop_start()

    def _on_connect(self, c, userdata, flags, reason_code, properties=None):
        self.session_present = bool(flags.session_present)
        self.accepted = not reason_code.is_failure
        self.connected.set()

    def _on_disconnect(self, c, userdata, flags, reason_code, properties=None):
        self.disconnected.set()

    def _on_subscribe(self, c, userdata, mid, reason_codes, properties=None):
        self.granted = [rc.value for rc in reason_codes]
        self.subscribed.set()

    def _on_unsubscribe(self, c, userdata, mid, reason_codes, properties=None):
        self.unsubscribed.set()

    def _on_message(self, c, userdata, msg):
        with self.arrived:
            self.messages.append(msg.payload.decode("utf-8", "replace"))
            self.arrived.notify_all()

    def wait_connected(self):
        if not self.connected.wait(STEP_TIMEOUT):
            fail("no CONNACK within %s s" % STEP_TIMEOUT)

    def subscribe(self, topic, qos=1):
        self.subscribed.clear()
        self.c.subscribe(topic, qos=qos)
        if not self.subscribed.wait(STEP_TIMEOUT):
            fail("no SUBACK for %s" % topic)

    def unsubscribe(self, topic):
        self.c.unsubscribe(topic)
        return self.unsubscribed.wait(STEP_TIMEOUT)

    def publish(self, topic, payload, qos=1):
        info = self.c.publish(topic, payload, qos=qos)
        info.wait_for_publish(STEP_TIMEOUT)
        if not info.is_published():
            fail("no acknowledgement for a QoS %d publish to %s" % (qos, topic))

    def wait_messages(self, count, timeout):
        """Waits until `count` messages arrived or `timeout` passed; returns them all."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.arrived.wait(left)
            return list(self.messages)

    def close(self):
        self.c.disconnect()
        self.disconnected.wait(STEP_TIMEOUT)
        self.c.loop_stop()


def fail(why):
    print(json.dumps({"error": why}), flush=True)
    os._exit(1)


def unique(prefix):
    return "%s-%d-%d" % (prefix, os.getpid(), int(time.time() * 1000) % 1000000)


def session(port, count):
    """A persistent subscriber goes away; QoS 1 messages published meanwhile wait for it."""
    client_id = unique("interop-persistent")
    topic = "interop/session/%s" % client_id
    first = Peer(port, client_id, clean_session=False)
    first.wait_connected()
    first.subscribe(topic, qos=1)
    first.close()

    publisher = Peer(port, unique("interop-session-pub"))
    publisher.wait_connected()
    for i in range(1, count + 1):
        publisher.publish(topic, str(i), qos=1)
    publisher.close()

    # Back, same id, clean_session=False, and no new SUBSCRIBE: only the session can
    # deliver what was published while it was away.
    second = Peer(port, client_id, clean_session=False)
    second.wait_connected()
    received = second.wait_messages(count, STEP_TIMEOUT)
    second_present = second.session_present
    second.close()

    # Clean up: a clean session with the same id discards the stored one.
    third = Peer(port, client_id, clean_session=True)
    third.wait_connected()
    third.close()
    print(json.dumps({
        "first_session_present": first.session_present,
        "session_present": second_present,
        "received": [int(p) for p in received if p.isdigit()],
    }), flush=True)


def unsubscribe(port):
    """A message before UNSUBSCRIBE arrives; one after its UNSUBACK does not."""
    topic = "interop/unsub/%s" % unique("t")
    sub = Peer(port, unique("interop-unsub"))
    sub.wait_connected()
    sub.subscribe(topic, qos=1)
    pub = Peer(port, unique("interop-unsub-pub"))
    pub.wait_connected()
    pub.publish(topic, "before", qos=1)
    before = sub.wait_messages(1, STEP_TIMEOUT)
    unsuback = sub.unsubscribe(topic)
    pub.publish(topic, "after", qos=1)
    # Nothing should come; give it a second to prove it.
    after = sub.wait_messages(2, 1.0)[len(before):]
    pub.close()
    sub.close()
    print(json.dumps({"before": before, "unsuback": unsuback, "after": after}), flush=True)


def keepalive0(port):
    """MQTT 3.1.1 allows keep-alive 0 (no keep-alive). Does the broker answer CONNECT,
    and does it accept?"""
    peer = Peer(port, unique("interop-ka0"), keepalive=0)
    connack = peer.connected.wait(3.0)
    closed = peer.disconnected.wait(0.5 if connack else 3.0)
    print(json.dumps({
        "connack": connack,
        "accepted": bool(peer.accepted),
        "closed_by_broker": closed and not connack,
    }), flush=True)
    peer.c.disconnect()
    peer.c.loop_stop()


def wspub(port, count):
    """The demo's JSON readings (device sensor-1, seq 1..COUNT), QoS 1, over WebSockets:
    how many the broker acknowledged."""
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=unique("interop-ws"),
        protocol=mqtt.MQTTv311,
        transport="websockets",
    )
    c.ws_set_options(path="/mqtt")
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    connected = threading.Event()
    c.on_connect = lambda c, u, f, rc, p=None: connected.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not connected.wait(STEP_TIMEOUT):
        fail("no CONNACK over WebSockets")
    infos = []
    for seq in range(1, count + 1):
        payload = json.dumps({"device_id": "sensor-1", "seq": seq, "temperature": 21.5,
                              "humidity": 40.2, "ts": time.time()})
        infos.append(c.publish("sensors/data", payload, qos=1))
    deadline = time.monotonic() + 60
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
    acked = sum(1 for info in infos if info.is_published())
    c.disconnect()
    c.loop_stop()
    print(json.dumps({"published": count, "acked": acked}), flush=True)


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    check, port = sys.argv[1], int(sys.argv[2])
    if check == "session":
        session(port, int(sys.argv[3]) if len(sys.argv) > 3 else 10)
    elif check == "unsubscribe":
        unsubscribe(port)
    elif check == "keepalive0":
        keepalive0(port)
    elif check == "wspub":
        wspub(port, int(sys.argv[3]))
    else:
        print("unknown check %r\n%s" % (check, __doc__), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
