"""Interop over TLS: stomp.py (its own TLS stack, Python's ssl module on OpenSSL) against
duomq's stomp+ssl listener, STOMP 1.1 and 1.2. The broker checks client certificates when
sent (clientAuth optional) and maps client-app's to the user app."""

import uuid

import pytest
import stomp

from conftest import describe, text


def queue_name(version):
    return f"/queue/interop-tls-v{version.replace('.', '')}-{uuid.uuid4().hex[:8]}"


def test_given_tls_broker_when_password_login_over_tls_should_send_and_receive(make_client, tls_broker, version):
    c = make_client("tls-password", tls_broker["address"], {"ca_certs": tls_broker["ca"]})
    c.connect("app", "s3cret")
    assert c.conn.transport.socket.version() in ("TLSv1.2", "TLSv1.3"), c.conn.transport.socket.version()
    destination = queue_name(version)
    c.subscribe(destination, "sub-1", ack="client-individual")
    for i in range(20):
        c.send(destination, f"over tls {i}", persistent="true")
    for i in range(20):
        message = c.next_message(f"message {i}")
        assert text(message) == f"over tls {i}"
        c.ack(message)
    c.disconnect()


def test_given_client_certificate_mapped_to_a_user_should_connect_without_passcode(make_client, tls_broker, version):
    files = {"ca_certs": tls_broker["ca"], "cert_file": tls_broker["cert"], "key_file": tls_broker["key"]}
    c = make_client("tls-certificate", tls_broker["address"], files)
    c.connect()
    destination = queue_name(version)
    c.subscribe(destination, "sub-1")
    c.send(destination, "by certificate")
    assert text(c.next_message()) == "by certificate"
    c.disconnect()

    # The certificate is app's: a CONNECT naming another user is refused.
    other = make_client("tls-certificate-other-login", tls_broker["address"], files)
    kind, frame = other.open("someone-else", "whatever")
    assert kind == "ERROR", f"expected ERROR, got {kind}: {describe(frame)}"
    assert 'logs in as "app"' in frame.headers.get("message", ""), describe(frame)


def test_given_a_client_trusting_another_ca_should_not_connect(make_client, tls_broker):
    c = make_client("tls-wrong-ca", tls_broker["address"], {"ca_certs": tls_broker["other_ca"]})
    with pytest.raises(stomp.exception.ConnectFailedException):
        c.conn.connect(username="app", passcode="s3cret", wait=True)
