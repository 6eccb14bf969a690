"""Interop: message groups (JMSXGroupID) with stomp.py, as ActiveMQ and Artemis clients use them.

Three consumers share a queue; a producer sends 20 groups x 20 messages. Each group must
reach exactly one consumer, in order, the first message flagged JMSXGroupFirstForConsumer.
Then one consumer disconnects: the next message of each of its groups moves to another
consumer, flagged again; the other groups stay where they were.
"""

import queue as queue_module
import time

from conftest import describe, text

GROUPS = 20
PER_GROUP = 20
CONSUMERS = 3
# How long all messages of a phase may take to reach the consumers.
DELIVERY_TIMEOUT = 30.0
# How long one wait on a consumer's queue lasts before trying the next.
POLL_INTERVAL = 0.05


def collect(consumers, count):
    """Reads MESSAGEs from all consumers (acking each) until `count` arrived; returns (consumer index, frame) pairs."""
    got = []
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} messages within {DELIVERY_TIMEOUT}s"
        for i, c in enumerate(consumers):
            if c is None:
                continue
            try:
                m = c.listener.messages.get(timeout=POLL_INTERVAL)
            except queue_module.Empty:
                continue
            c.ack(m)
            got.append((i, m))
    return got


def group_and_seq(m):
    group, seq = text(m).rsplit("-", 1)
    return group, int(seq)


def first_for_consumer(m):
    return m.headers.get("JMSXGroupFirstForConsumer") == "true"


def test_given_three_consumers_when_twenty_groups_sent_should_pin_them_and_move_a_leavers_groups(client, destination):
    queue = destination("queue")
    consumers = []
    for i in range(CONSUMERS):
        c = client(f"consumer-{i}")
        c.subscribe(queue, f"sub-{i}", ack="client-individual")
        consumers.append(c)
    producer = client("producer")
    for seq in range(PER_GROUP):
        for g in range(GROUPS):
            producer.send(queue, f"g{g}-{seq}", JMSXGroupID=f"g{g}")

    owner = {}
    last_seq = {}
    for i, m in collect(consumers, GROUPS * PER_GROUP):
        group, seq = group_and_seq(m)
        assert owner.setdefault(group, i) == i, f"group {group} reached consumers {owner[group]} and {i}"
        assert seq == last_seq.get(group, -1) + 1, f"group {group} out of order: {seq} after {last_seq.get(group)}"
        last_seq[group] = seq
        assert first_for_consumer(m) == (seq == 0), f"JMSXGroupFirstForConsumer on {group}-{seq}: {describe(m)}"
    counts = [sum(1 for o in owner.values() if o == i) for i in range(CONSUMERS)]
    assert len(owner) == GROUPS and all(c in (6, 7) for c in counts), f"groups per consumer: {counts}"

    leaver = 0
    consumers[leaver].disconnect()
    consumers[leaver] = None
    for g in range(GROUPS):
        producer.send(queue, f"g{g}-{PER_GROUP}", JMSXGroupID=f"g{g}")
    moved = set()
    for i, m in collect(consumers, GROUPS):
        group, seq = group_and_seq(m)
        assert seq == PER_GROUP
        if owner[group] == leaver:
            assert first_for_consumer(m), f"{group} moved from the leaver without the flag: {describe(m)}"
            moved.add(group)
            owner[group] = i
        else:
            assert owner[group] == i, f"group {group} moved from consumer {owner[group]} (still there) to {i}"
            assert not first_for_consumer(m), describe(m)
    assert len(moved) == counts[leaver]
    remaining = [sum(1 for o in owner.values() if o == i) for i in range(1, CONSUMERS)]
    assert all(c in (9, 10, 11) for c in remaining), f"groups per remaining consumer: {remaining}"
