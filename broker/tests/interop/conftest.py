"""Fixtures for driving a running duomq broker with stomp.py.

The broker is started by `broker/tests/interop_stomppy.rs`, which passes its address in
DUOMQ_STOMP_HOST / DUOMQ_STOMP_PORT (DUOMQ_AUTH_STOMP_PORT for a broker with users, and
DUOMQ_TLS_STOMP_PORT with DUOMQ_TLS_* files for one speaking stomp+ssl).
Every wait here has a named timeout; nothing sleeps for synchronisation.
"""

import os
import queue
import uuid

import pytest
import stomp
from stomp.protocol import Protocol11

# How long to wait for CONNECTED (or the ERROR refusing it).
CONNECT_TIMEOUT = 10.0
# How long to wait for one expected frame (MESSAGE, RECEIPT, ERROR).
FRAME_TIMEOUT = 10.0
# How long to wait for the broker to close the socket after DISCONNECT or an ERROR.
CLOSE_TIMEOUT = 10.0

VERSIONS = ["1.1", "1.2"]


def required_env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: these tests drive a running duomq broker; run them through "
            "`cargo test --test interop_stomppy`, which starts the brokers and sets it",
            pytrace=False,
        )
    return value


class Collector(stomp.ConnectionListener):
    """Puts every frame stomp.py hands us on a queue, so tests wait with explicit timeouts."""

    def __init__(self):
        self.messages = queue.Queue()
        self.receipts = queue.Queue()
        # CONNECTED, ERROR and the socket closing, in the order they happen.
        self.control = queue.Queue()
        self.errors = []

    def on_connected(self, frame):
        self.control.put(("CONNECTED", frame))

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        self.receipts.put(frame.headers.get("receipt-id"))

    def on_error(self, frame):
        self.errors.append(frame)
        self.control.put(("ERROR", frame))

    def on_disconnected(self):
        self.control.put(("DISCONNECTED", None))


class Client:
    """One stomp.py connection (1.1 or 1.2) with a Collector and timed waits."""

    def __init__(self, host, port, version, name, tls=None):
        """tls: None (plaintext) or set_ssl's keywords (ca_certs, cert_file, key_file)."""
        connection_class = {"1.1": stomp.Connection11, "1.2": stomp.Connection12}[version]
        self.name = name
        self.version = version
        self.listener = Collector()
        # auto_decode=False: bodies stay bytes, so binary bodies can be compared exactly.
        self.conn = connection_class(
            [(host, int(port))],
            auto_decode=False,
            heartbeats=(0, 0),
            reconnect_attempts_max=1,
        )
        if tls is not None:
            self.conn.set_ssl(for_hosts=[(host, int(port))], **tls)
        self.conn.set_listener("collector", self.listener)
        self._receipts_seen = set()

    # --- connection life -------------------------------------------------------------

    def open(self, login=None, passcode=None):
        """Sends STOMP and returns the first control event: ("CONNECTED"|"ERROR"|"DISCONNECTED", frame)."""
        self.conn.connect(username=login, passcode=passcode, wait=False)
        return self.next_control(CONNECT_TIMEOUT, "CONNECTED or ERROR after STOMP")

    def connect(self, login=None, passcode=None):
        kind, frame = self.open(login, passcode)
        assert kind == "CONNECTED", f"{self.name}: expected CONNECTED, got {kind}: {describe(frame)}"
        assert frame.headers.get("version") == self.version, (
            f"{self.name}: asked for {self.version}, CONNECTED says version:{frame.headers.get('version')}"
        )
        return frame

    def disconnect(self):
        """DISCONNECT with a receipt; waits for the receipt and for the socket to close."""
        receipt = f"bye-{uuid.uuid4().hex[:8]}"
        # Protocol11.disconnect sends the frame without stomp.py's untimed wait for the
        # receiver thread; we wait ourselves with a timeout.
        Protocol11.disconnect(self.conn, receipt=receipt)
        self.wait_receipt(receipt)
        self.wait_closed()

    def wait_closed(self):
        while True:
            kind, _ = self.next_control(CLOSE_TIMEOUT, "the socket to close")
            if kind == "DISCONNECTED":
                return

    def close(self):
        """Drops the socket if still open (test teardown)."""
        try:
            if self.conn.transport.socket is not None:
                self.conn.transport.disconnect_socket()
        except Exception:
            pass

    def next_control(self, timeout, what):
        try:
            return self.listener.control.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"{self.name}: no {what} within {timeout}s")

    # --- frames ----------------------------------------------------------------------

    def subscribe(self, destination, sub_id, ack="auto", **headers):
        receipt = f"sub-{sub_id}-{uuid.uuid4().hex[:8]}"
        self.conn.subscribe(destination, sub_id, ack=ack, receipt=receipt, **headers)
        self.wait_receipt(receipt)

    def unsubscribe(self, sub_id):
        receipt = f"unsub-{sub_id}-{uuid.uuid4().hex[:8]}"
        self.conn.unsubscribe(sub_id, receipt=receipt)
        self.wait_receipt(receipt)

    def send(self, destination, body, receipt=True, **headers):
        """SEND; with receipt=True waits for the RECEIPT. Returns the receipt id (or None)."""
        receipt_id = f"send-{uuid.uuid4().hex[:12]}" if receipt else None
        if receipt_id:
            headers["receipt"] = receipt_id
        self.conn.send(destination, body, **headers)
        if receipt_id:
            self.wait_receipt(receipt_id)
        return receipt_id

    def wait_receipt(self, receipt_id, timeout=FRAME_TIMEOUT):
        try:
            while receipt_id not in self._receipts_seen:
                self._receipts_seen.add(self.listener.receipts.get(timeout=timeout))
        except queue.Empty:
            errors = [describe(e) for e in self.listener.errors]
            pytest.fail(f"{self.name}: no RECEIPT {receipt_id} within {timeout}s; ERRORs: {errors}")

    def next_message(self, what="a MESSAGE", timeout=FRAME_TIMEOUT):
        try:
            return self.listener.messages.get(timeout=timeout)
        except queue.Empty:
            errors = [describe(e) for e in self.listener.errors]
            pytest.fail(f"{self.name}: no MESSAGE ({what}) within {timeout}s; ERRORs: {errors}")

    def next_messages(self, count, what="MESSAGEs"):
        return [self.next_message(f"{what}: {i + 1} of {count}") for i in range(count)]

    def ack(self, message, transaction=None, receipt=None):
        if self.version == "1.2":
            self.conn.ack(message.headers["ack"], transaction=transaction, receipt=receipt)
        else:
            self.conn.ack(
                message.headers["message-id"],
                message.headers["subscription"],
                transaction=transaction,
                receipt=receipt,
            )
        if receipt:
            self.wait_receipt(receipt)

    def nack(self, message, transaction=None, receipt=None):
        if self.version == "1.2":
            self.conn.nack(message.headers["ack"], transaction=transaction, receipt=receipt)
        else:
            self.conn.nack(
                message.headers["message-id"],
                message.headers["subscription"],
                transaction=transaction,
                receipt=receipt,
            )
        if receipt:
            self.wait_receipt(receipt)


def describe(frame):
    if frame is None:
        return "None"
    body = frame.body if isinstance(frame.body, (bytes, type(None))) else frame.body.encode()
    return f"{frame.cmd} {frame.headers} body={body[:200]!r}"


def text(frame):
    return frame.body.decode("utf-8")


@pytest.fixture(scope="session")
def stomp_address():
    return required_env("DUOMQ_STOMP_HOST"), required_env("DUOMQ_STOMP_PORT")


@pytest.fixture(scope="session")
def auth_stomp_address():
    return required_env("DUOMQ_STOMP_HOST"), required_env("DUOMQ_AUTH_STOMP_PORT")


@pytest.fixture(scope="session")
def tls_broker():
    """The TLS broker: its address and files. clientAuth optional; the user app (passcode
    s3cret) and the certificate client-app mapped to app."""
    return {
        "address": (required_env("DUOMQ_STOMP_HOST"), required_env("DUOMQ_TLS_STOMP_PORT")),
        "ca": required_env("DUOMQ_TLS_CA_FILE"),
        "cert": required_env("DUOMQ_TLS_CERT_FILE"),
        "key": required_env("DUOMQ_TLS_KEY_FILE"),
        "other_ca": required_env("DUOMQ_TLS_OTHER_CA_FILE"),
    }


@pytest.fixture(params=VERSIONS, ids=[f"stomp{v.replace('.', '')}" for v in VERSIONS])
def version(request):
    return request.param


@pytest.fixture
def make_client(stomp_address, version):
    """make_client(name, address=None, tls=None) -> an unconnected Client; all are closed at teardown."""
    clients = []

    def make(name, address=None, tls=None):
        host, port = address or stomp_address
        c = Client(host, port, version, name, tls)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def client(make_client):
    """client(name) -> a Client already CONNECTED to the open broker."""

    def connected(name):
        c = make_client(name)
        c.connect()
        return c

    return connected


@pytest.fixture
def destination(request, version):
    """destination("queue"|"topic") -> a name no other test (or version) uses."""
    short = request.node.originalname.removeprefix("test_")[:40]

    def name(kind, suffix=""):
        return f"/{kind}/interop-{short}-v{version.replace('.', '')}-{uuid.uuid4().hex[:8]}{suffix}"

    return name
