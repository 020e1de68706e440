#!/usr/bin/env python3
"""A real SMTP server for the tests (aiosmtpd), independent of switchboard. Every accepted
message is written to DIR as one JSON file {from, to, data, user}. Prints the port it
listens on, then serves until killed.

  smtp_sink.py --dir DIR [--port N] [--fail-first N] [--hold-file PATH]
               [--tls-cert C --tls-key K [--implicit-tls]] [--auth USER:PASSWORD]
               [--idle-timeout SECONDS] [--delay SECONDS]

--fail-first N   answers the first N messages with 451 (a transient error)
--hold-file P    answers 451 while the file P exists
--tls-cert/key   offers STARTTLS and requires it
--implicit-tls   speaks TLS from the first byte instead (SMTPS)
--idle-timeout S drops a client that stays silent for S seconds
--auth U:P       requires AUTH (PLAIN or LOGIN) with these credentials, over TLS
--delay S        records each message, then waits S seconds before answering 250 (a send
                 still in flight when the client is stopped)
"""
import argparse
import asyncio
import json
import os
import ssl
import sys
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Handler:
    def __init__(self, out, fail_first, hold_file, delay=0.0):
        self.out = out
        self.delay = delay
        self.fail_first = fail_first
        self.hold_file = hold_file
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            n = self.count
        if n <= self.fail_first:
            return "451 4.3.0 Try again later"
        if self.hold_file and os.path.exists(self.hold_file):
            return "451 4.3.0 Held, try again later"
        record = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
            "authenticated": bool(getattr(session, "authenticated", False)),
            "tls": bool(getattr(session, "ssl", None)) or server.transport.get_extra_info("ssl_object") is not None,
            "peer": list(session.peer)[:2] if session.peer else None,
        }
        path = os.path.join(self.out, "%d-%d.json" % (time.time_ns(), n))
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        if self.delay:
            await asyncio.sleep(self.delay)
        return "250 2.0.0 Accepted"


class Authenticator:
    def __init__(self, user, password):
        self.user = user.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == self.user and auth_data.password == self.password
        return AuthResult(success=ok)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--hold-file")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--auth")
    p.add_argument("--idle-timeout", type=float)
    p.add_argument("--delay", type=float, default=0.0)
    a = p.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    kwargs = {}
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        if a.implicit_tls:
            kwargs.update(ssl_context=ctx)
        else:
            kwargs.update(tls_context=ctx, require_starttls=True)
    if a.idle_timeout:
        kwargs.update(timeout=a.idle_timeout)
    if a.auth:
        user, password = a.auth.split(":", 1)
        kwargs.update(authenticator=Authenticator(user, password), auth_required=True, auth_require_tls=bool(a.tls_cert) and not a.implicit_tls)
    port = a.port
    if port == 0:
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
    controller = Controller(Handler(a.dir, a.fail_first, a.hold_file, a.delay), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print(port, flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
