#!/usr/bin/env python3
"""A duomq broker's /status for the bench scripts: admin-status.py PORT [PASSWORD_FILE].

Prints the JSON. With a cluster password file (the members' ha.cluster.passwordFile), the
request is signed as duomq_broker::admin::auth signs it (a broker with a cluster password
answers /status only so): HMAC-SHA256 keyed with the password over the length-prefixed
domain, time, method, path and body, sent as `x-duomq-signature: <unix seconds>.<hex>`.
As a module: status(port, password_file=None, timeout=5) returns the parsed JSON.
"""
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.request

DOMAIN = b"duomq admin request v1"


def sign(password: bytes, method: str, path: str, body: bytes, now: int) -> str:
    mac = hmac.new(password, digestmod=hashlib.sha256)
    for field in (DOMAIN, now.to_bytes(8, "big"), method.encode(), path.encode(), body):
        mac.update(len(field).to_bytes(8, "big"))
        mac.update(field)
    return f"{now}.{mac.hexdigest()}"


def status(port, password_file=None, timeout=5.0):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/status")
    if password_file and os.path.exists(password_file):
        with open(password_file, "rb") as f:
            password = f.read().rstrip(b"\r\n")
        request.add_header("x-duomq-signature", sign(password, "GET", "/status", b"", int(time.time())))
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.load(r)


if __name__ == "__main__":
    json.dump(status(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None), sys.stdout)
