#!/usr/bin/env python3
"""Small network helpers for compare.sh: free loopback ports, readiness polls, queue declares.

It speaks just enough STOMP to tell that a broker answers a CONNECT and to declare a
queue with the headers a broker needs (RabbitMQ's x-queue-type), over TLS for a
stomp+ssl:// URL (the broker's certificate checked against --ca-file and the URL's host).
It measures nothing: the load generator is duomq-bench. Python standard library only.
"""

import argparse
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request


def free_ports(count):
    """Ports the kernel hands out for 127.0.0.1, all held at once so they are distinct."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def is_tls(url):
    return url.startswith(("stomp+ssl://", "ssl://"))


def parse_url(url):
    """stomp[+ssl]://[user:pass@]host:port -> (host, port, login, passcode)."""
    rest = url.split("://", 1)[1] if "://" in url else url
    login = passcode = None
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        login, _, passcode = userinfo.partition(":")
    host, _, port = rest.rpartition(":")
    return host, int(port), login, passcode


def encode_frame(command, headers, body=b""):
    lines = [command] + [f"{k}:{v}" for k, v in headers]
    return ("\n".join(lines) + "\n\n").encode() + body + b"\0"


class StompSession:
    """One blocking STOMP 1.2 connection; frames are read whole, bodies ignored."""

    def __init__(self, url, vhost, timeout, ca_file=None):
        host, port, login, passcode = parse_url(url)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if is_tls(url):
            if not ca_file:
                self.sock.close()
                raise RuntimeError(f"{url} is TLS: pass --ca-file")
            context = ssl.create_default_context(cafile=ca_file)
            self.sock = context.wrap_socket(self.sock, server_hostname=host)
        self.buf = b""
        headers = [("accept-version", "1.2"), ("host", vhost), ("heart-beat", "0,0")]
        if login is not None:
            headers += [("login", login), ("passcode", passcode or "")]
        self.sock.sendall(encode_frame("CONNECT", headers))
        command, headers = self.read_frame()
        if command != "CONNECTED":
            raise RuntimeError(f"CONNECT answered with {command}: {headers.get('message', '')}")

    def read_frame(self):
        while True:
            # Heart-beat EOLs may precede a frame.
            self.buf = self.buf.lstrip(b"\r\n")
            end = self.buf.find(b"\0")
            if end >= 0:
                raw, self.buf = self.buf[:end], self.buf[end + 1 :]
                head = raw.split(b"\n\n", 1)[0].decode(errors="replace").split("\n")
                headers = {}
                for line in head[1:]:
                    key, _, value = line.rstrip("\r").partition(":")
                    headers.setdefault(key, value)
                return head[0].strip(), headers
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed by the broker")
            self.buf += chunk

    def request(self, command, headers, receipt):
        """Send a frame asking for a RECEIPT; fail on ERROR."""
        self.sock.sendall(encode_frame(command, headers + [("receipt", receipt)]))
        while True:
            got, got_headers = self.read_frame()
            if got == "RECEIPT" and got_headers.get("receipt-id") == receipt:
                return
            if got == "ERROR":
                raise RuntimeError(f"{command} failed: {got_headers.get('message', '')}")

    def close(self):
        try:
            self.request("DISCONNECT", [], "bye")
        finally:
            self.sock.close()


def process_gone(pid):
    """True when PID has exited (or is a zombie waiting for its parent)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def await_stomp(args):
    deadline = time.monotonic() + args.timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if process_gone(args.pid):
            print(f"probe: process {args.pid} exited before {args.url} answered: {last}", file=sys.stderr)
            return 1
        try:
            StompSession(args.url, args.vhost, timeout=2, ca_file=args.ca_file).close()
            return 0
        except (OSError, RuntimeError) as err:
            last = str(err)
        time.sleep(0.2)
    print(f"probe: {args.url} did not answer CONNECT within {args.timeout}s: {last}", file=sys.stderr)
    return 1


def await_http(args):
    deadline = time.monotonic() + args.timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if process_gone(args.pid):
            print(f"probe: process {args.pid} exited before {args.url} was ready: {last}", file=sys.stderr)
            return 1
        try:
            with urllib.request.urlopen(args.url, timeout=2) as resp:
                if resp.status == 200:
                    return 0
                last = f"HTTP {resp.status}"
        except (OSError, urllib.error.URLError) as err:
            last = str(err)
        time.sleep(0.2)
    print(f"probe: {args.url} was not ready within {args.timeout}s: {last}", file=sys.stderr)
    return 1


def declare(args):
    """SUBSCRIBE and UNSUBSCRIBE once, so the broker creates the queue with these headers."""
    headers = [("id", "declare"), ("destination", args.destination), ("ack", "client-individual")]
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"probe: --header wants NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        headers.append((key, value))
    try:
        session = StompSession(args.url, args.vhost, timeout=args.timeout, ca_file=args.ca_file)
        session.request("SUBSCRIBE", headers, "subscribed")
        session.request("UNSUBSCRIBE", [("id", "declare")], "unsubscribed")
        session.close()
    except (OSError, RuntimeError) as err:
        print(f"probe: failed to declare {args.destination}: {err}", file=sys.stderr)
        return 1
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ports = sub.add_parser("free-ports", help="print N free 127.0.0.1 ports, one a line")
    ports.add_argument("count", type=int)

    for name, helptext in [
        ("await-stomp", "wait until a STOMP CONNECT gets CONNECTED"),
        ("await-http", "wait until a URL answers 200"),
        ("declare", "create a queue by subscribing once with extra headers"),
    ]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--url", required=True)
        p.add_argument("--timeout", type=float, default=60)
        p.add_argument("--vhost", default="/", help="CONNECT host header (RabbitMQ: the virtual host)")
        p.add_argument("--pid", type=int, help="give up at once when this process exits")
        p.add_argument("--ca-file", help="CA certificates (PEM) for a stomp+ssl:// URL")
        if name == "declare":
            p.add_argument("--destination", required=True)
            p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")

    args = parser.parse_args()
    if args.command == "free-ports":
        print("\n".join(str(p) for p in free_ports(args.count)))
        return 0
    return {"await-stomp": await_stomp, "await-http": await_http, "declare": declare}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
