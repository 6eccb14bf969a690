"""Interop: the independent Python client stomp.py drives duomq over STOMP 1.1 and 1.2.

Every test runs once per protocol version (the `version` fixture). Absence of a message is
shown without sleeping: a marker is sent after the thing that must not arrive, and the
marker has to be the next MESSAGE (queues are FIFO, a subscriber gets one topic's messages
in order).
"""

import queue as queue_module
import time
import uuid

import pytest

from conftest import FRAME_TIMEOUT, describe, text

COMPETING_MESSAGES = 100
# How long 100 messages may take to reach two competing consumers.
COMPETING_TIMEOUT = 20.0
# How long one wait on a consumer's queue lasts before trying the other.
POLL_INTERVAL = 0.05
BINARY_BODY = bytes(range(256)) * 256  # 64 KiB, every byte value, NULs included


def assert_next_is_marker(producer, consumer, destination, what):
    marker = f"marker-{uuid.uuid4().hex}"
    producer.send(destination, marker)
    m = consumer.next_message(f"the marker, sent after {what}")
    assert text(m) == marker, f"{what}: expected only the marker, got {describe(m)}"


# --- connection ----------------------------------------------------------------------


def test_given_broker_when_connect_and_disconnect_with_receipt_should_confirm_both(make_client, version):
    c = make_client("client")
    connected = c.connect()
    assert connected.headers.get("version") == version
    assert connected.headers.get("server", "").startswith("duomq/"), describe(connected)
    c.disconnect()
    assert c.listener.errors == []


# --- queues and topics ---------------------------------------------------------------


def test_given_queue_subscriber_when_message_sent_should_receive_it_with_headers(client, destination):
    queue = destination("queue")
    consumer = client("consumer")
    consumer.subscribe(queue, "sub-1")
    producer = client("producer")
    producer.send(queue, "hello, duomq", content_type="text/plain", **{"x-custom": "value"})

    m = consumer.next_message()
    assert text(m) == "hello, duomq"
    assert m.headers.get("destination") == queue
    assert m.headers.get("subscription") == "sub-1"
    assert m.headers.get("message-id")
    assert m.headers.get("content-type") == "text/plain"
    assert m.headers.get("x-custom") == "value"
    producer.disconnect()
    consumer.disconnect()


def test_given_two_topic_subscribers_when_messages_sent_should_each_get_every_message_in_order(client, destination):
    topic = destination("topic")
    first = client("subscriber-1")
    second = client("subscriber-2")
    first.subscribe(topic, "t1")
    second.subscribe(topic, "t2")
    producer = client("producer")
    bodies = [f"fan-out-{i}" for i in range(5)]
    for body in bodies:
        producer.send(topic, body)

    for subscriber, sub_id in ((first, "t1"), (second, "t2")):
        got = subscriber.next_messages(len(bodies), f"topic copies for {sub_id}")
        assert [text(m) for m in got] == bodies
        assert all(m.headers.get("subscription") == sub_id for m in got)
    # Nothing beyond one copy each: a marker is the next MESSAGE on both.
    marker = f"marker-{uuid.uuid4().hex}"
    producer.send(topic, marker)
    for subscriber in (first, second):
        m = subscriber.next_message("the marker, sent after the fan-out")
        assert text(m) == marker, f"{subscriber.name}: expected only the marker, got {describe(m)}"


def test_given_persistent_sends_with_receipts_when_sent_should_receipt_each_and_deliver_all(client, destination):
    queue = destination("queue")
    producer = client("producer")
    receipts = [f"persist-{i}-{uuid.uuid4().hex[:8]}" for i in range(20)]
    # Pipelined: all SENDs first, then every receipt must arrive.
    for i, r in enumerate(receipts):
        producer.conn.send(queue, f"durable-{i}", persistent="true", receipt=r)
    for r in receipts:
        producer.wait_receipt(r)

    consumer = client("consumer")
    consumer.subscribe(queue, "sub-1", ack="client-individual")
    got = consumer.next_messages(len(receipts), "persistent messages")
    assert [text(m) for m in got] == [f"durable-{i}" for i in range(len(receipts))]
    for m in got[:-1]:
        consumer.ack(m)
    consumer.ack(got[-1], receipt="ack-last")
    consumer.disconnect()


# --- acknowledgements ----------------------------------------------------------------


def test_given_client_individual_when_one_acked_one_nacked_should_redeliver_only_the_nacked(
    client, destination, version
):
    queue = destination("queue")
    producer = client("producer")
    for i in range(3):
        producer.send(queue, f"m{i}", persistent="true")

    consumer = client("consumer")
    consumer.subscribe(queue, "sub-1", ack="client-individual")
    m0, m1, m2 = consumer.next_messages(3, "first deliveries")
    assert [text(m) for m in (m0, m1, m2)] == ["m0", "m1", "m2"]
    assert all(m.headers.get("redelivered", "false") != "true" for m in (m0, m1, m2))
    if version == "1.2":
        assert all(m.headers.get("ack") for m in (m0, m1, m2)), "1.2 client-individual MESSAGE without ack header"

    consumer.ack(m0, receipt="ack-m0")
    consumer.nack(m1, receipt="nack-m1")
    again = consumer.next_message("the NACKed message again")
    assert text(again) == "m1", describe(again)
    assert again.headers.get("redelivered") == "true", f"redelivery without redelivered:true: {describe(again)}"

    consumer.ack(again, receipt="ack-m1")
    consumer.ack(m2, receipt="ack-m2")
    consumer.disconnect()

    fresh = client("fresh-consumer")
    fresh.subscribe(queue, "sub-2", ack="client-individual")
    assert_next_is_marker(producer, fresh, queue, "acking every message")


def test_given_client_ack_mode_when_third_acked_should_ack_the_first_three_cumulatively(client, destination):
    queue = destination("queue")
    producer = client("producer")
    for i in range(5):
        producer.send(queue, f"m{i}", persistent="true")

    consumer = client("consumer")
    consumer.subscribe(queue, "sub-1", ack="client")
    got = consumer.next_messages(5, "first deliveries")
    assert [text(m) for m in got] == [f"m{i}" for i in range(5)]
    consumer.ack(got[2], receipt="cumulative-ack")
    consumer.disconnect()  # m3 and m4 are unacked and go back to the queue

    fresh = client("fresh-consumer")
    fresh.subscribe(queue, "sub-2", ack="client")
    back = fresh.next_messages(2, "the unacked tail again")
    assert [text(m) for m in back] == ["m3", "m4"], [describe(m) for m in back]
    assert all(m.headers.get("redelivered") == "true" for m in back), [describe(m) for m in back]
    fresh.ack(back[-1], receipt="ack-tail")
    assert_next_is_marker(producer, fresh, queue, "the cumulative acks")


# --- transactions --------------------------------------------------------------------


def test_given_transaction_when_committed_should_deliver_sends_only_after_commit(client, destination):
    queue = destination("queue")
    consumer = client("consumer")
    consumer.subscribe(queue, "sub-1")
    producer = client("producer")

    tx = producer.conn.begin()
    producer.send(queue, "tx-1", transaction=tx)
    producer.send(queue, "tx-2", transaction=tx)
    # Before COMMIT the transactional sends are invisible: the marker comes first.
    assert_next_is_marker(producer, consumer, queue, "transactional sends before COMMIT")
    producer.conn.commit(tx, receipt="commit-1")
    producer.wait_receipt("commit-1")
    assert [text(m) for m in consumer.next_messages(2, "committed sends")] == ["tx-1", "tx-2"]


def test_given_transaction_when_aborted_should_never_deliver_its_sends(client, destination):
    queue = destination("queue")
    consumer = client("consumer")
    consumer.subscribe(queue, "sub-1")
    producer = client("producer")

    tx = producer.conn.begin()
    producer.send(queue, "aborted-1", transaction=tx)
    producer.send(queue, "aborted-2", transaction=tx, persistent="true")
    producer.conn.abort(tx, receipt="abort-1")
    producer.wait_receipt("abort-1")
    assert_next_is_marker(producer, consumer, queue, "an aborted transaction")


def test_given_acks_in_transactions_when_one_aborted_one_committed_should_apply_only_committed(client, destination):
    queue = destination("queue")
    producer = client("producer")
    producer.send(queue, "m0", persistent="true")
    producer.send(queue, "m1", persistent="true")

    consumer = client("consumer")
    consumer.subscribe(queue, "sub-1", ack="client-individual")
    m0, m1 = consumer.next_messages(2, "first deliveries")
    assert [text(m0), text(m1)] == ["m0", "m1"]

    aborted = consumer.conn.begin()
    consumer.ack(m0, transaction=aborted)
    consumer.conn.abort(aborted, receipt="abort-acks")
    consumer.wait_receipt("abort-acks")
    committed = consumer.conn.begin()
    consumer.ack(m1, transaction=committed)
    consumer.conn.commit(committed, receipt="commit-acks")
    consumer.wait_receipt("commit-acks")
    consumer.disconnect()

    fresh = client("fresh-consumer")
    fresh.subscribe(queue, "sub-2", ack="client-individual")
    back = fresh.next_message("the message whose ACK was aborted")
    assert text(back) == "m0", describe(back)
    assert back.headers.get("redelivered") == "true", describe(back)
    fresh.ack(back, receipt="ack-m0")
    assert_next_is_marker(producer, fresh, queue, "the committed ACK")


# --- encoding ------------------------------------------------------------------------


def test_given_header_values_with_special_characters_when_round_tripped_should_arrive_exactly(
    client, destination, version
):
    queue = destination("queue")
    headers = {
        "x-colon": "a:b:c",
        "x-newline": "line1\nline2\n",
        "x-backslash": "C:\\dir\\file\\",
        "x-escape-lookalikes": "\\n\\c\\\\ literally",
        "x-mixed": ":\\\n:",
        "x-utf8": "grüße, 世界",
    }
    if version == "1.2":
        headers["x-carriage-return"] = "a\rb\r\n"
    consumer = client("consumer")
    consumer.subscribe(queue, "sub-1")
    producer = client("producer")
    producer.send(queue, "escaped", **dict(headers))

    m = consumer.next_message()
    for name, value in headers.items():
        assert m.headers.get(name) == value, f"{name}: sent {value!r}, received {m.headers.get(name)!r}"


@pytest.mark.parametrize(
    "body",
    [BINARY_BODY, b"\x00", b"\x00\x00nul first and last\x00", b"\n\n\x00\r\n"],
    ids=["64KiB-all-bytes", "single-nul", "nuls", "eols-and-nul"],
)
def test_given_binary_body_when_round_tripped_should_arrive_byte_for_byte(client, destination, body):
    queue = destination("queue")
    consumer = client("consumer")
    consumer.subscribe(queue, "sub-1")
    producer = client("producer")
    producer.send(queue, body, persistent="true", content_type="application/octet-stream")

    m = consumer.next_message("the binary message")
    assert isinstance(m.body, bytes)
    assert m.headers.get("content-length") == str(len(body)), describe(m)
    assert len(m.body) == len(body)
    assert m.body == body, f"first difference at byte {next(i for i, (a, b) in enumerate(zip(m.body, body)) if a != b)}"
    # The frame after a binary body is still parsed correctly.
    assert_next_is_marker(producer, consumer, queue, "a binary body")


# --- competing consumers -------------------------------------------------------------


def test_given_two_consumers_on_queue_when_many_sent_should_split_all_without_duplicates(client, destination):
    queue = destination("queue")
    consumers = [client(f"consumer-{i}") for i in range(2)]
    for i, c in enumerate(consumers):
        c.subscribe(queue, f"sub-{i}")
    producer = client("producer")
    for i in range(COMPETING_MESSAGES):
        producer.send(queue, f"work-{i}", receipt=(i == COMPETING_MESSAGES - 1))

    received = [[] for _ in consumers]
    deadline = time.monotonic() + COMPETING_TIMEOUT
    while sum(map(len, received)) < COMPETING_MESSAGES:
        if time.monotonic() > deadline:
            pytest.fail(
                f"only {sum(map(len, received))} of {COMPETING_MESSAGES} messages within {COMPETING_TIMEOUT}s; "
                f"per consumer {[len(r) for r in received]}"
            )
        for i, c in enumerate(consumers):
            try:
                received[i].append(text(c.listener.messages.get(timeout=POLL_INTERVAL)))
            except queue_module.Empty:
                pass

    everything = received[0] + received[1]
    assert len(everything) == len(set(everything)), "duplicate deliveries"
    assert set(everything) == {f"work-{i}" for i in range(COMPETING_MESSAGES)}
    assert received[0] and received[1], f"one consumer got everything: {[len(r) for r in received]}"


# --- errors --------------------------------------------------------------------------


def test_given_ack_with_unknown_id_when_sent_should_get_error_with_receipt_id_and_close(client, version):
    c = client("client")
    if version == "1.2":
        c.conn.ack("no-such-ack-id", receipt="bad-ack")
    else:
        c.conn.ack("no-such-message-id", "no-such-subscription", receipt="bad-ack")
    kind, frame = c.next_control(FRAME_TIMEOUT, "ERROR for an ACK of an unknown message")
    assert kind == "ERROR", f"expected ERROR, got {kind}: {describe(frame)}"
    assert frame.headers.get("message"), f"ERROR without a message header: {describe(frame)}"
    assert frame.headers.get("receipt-id") == "bad-ack", describe(frame)
    assert c.listener.errors == [frame], "exactly one ERROR reaches on_error"
    c.wait_closed()


# --- authentication ------------------------------------------------------------------


@pytest.mark.parametrize(
    "login,passcode",
    [("app", "wrong"), ("nobody", "s3cret"), (None, None)],
    ids=["wrong-passcode", "unknown-user", "anonymous"],
)
def test_given_broker_with_users_when_bad_credentials_should_refuse_with_error(
    make_client, auth_stomp_address, login, passcode
):
    c = make_client("intruder", auth_stomp_address)
    kind, frame = c.open(login, passcode)
    assert kind == "ERROR", f"expected ERROR for login {login!r}, got {kind}: {describe(frame)}"
    assert passcode is None or passcode not in str(frame.headers) + repr(frame.body), "ERROR echoes the passcode"
    c.wait_closed()
    assert not c.conn.is_connected()


def test_given_broker_with_users_when_right_credentials_should_connect_and_exchange(
    make_client, auth_stomp_address, version
):
    c = make_client("app", auth_stomp_address)
    c.connect("app", "s3cret")
    queue = f"/queue/interop-auth-v{version.replace('.', '')}-{uuid.uuid4().hex[:8]}"
    c.subscribe(queue, "sub-1")
    c.send(queue, "authenticated")
    assert text(c.next_message()) == "authenticated"
    c.disconnect()
