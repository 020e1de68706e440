#!/usr/bin/env python3
"""Pre-signs Pomelo notifications for wrk (pomelo.lua), independently of switchboard.

    sign_pomelo.py <api-secret base64> <endpoint> <count> > signed.txt

Writes the body template (one `%d`: the request's number), the endpoint, then one line
`<X-Timestamp> <X-Signature>` per request: `hmac-sha256 base64(HMAC-SHA256(key,
timestamp + endpoint + body))`, `key` the base64-decoded api-secret (Pomelo's scheme).
The timestamp is now, so the file is good for the server's tolerance (300 s by default).
"""

import base64
import hashlib
import hmac
import sys
import time

TEMPLATE = (
    '{"token":{"origin":"APPLE_PAY","card_id":"card_%d","user_id":"user_123456789"},'
    '"otp":"123456","to":"m***@example.com","contact_method":"SMS"}'
)


def main() -> None:
    secret, endpoint, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    key = base64.b64decode(secret)
    ts = str(int(time.time()))
    prefix = (ts + endpoint).encode()
    out = sys.stdout
    out.write(TEMPLATE + "\n" + endpoint + "\n")
    base = hmac.new(key, prefix, hashlib.sha256)
    lines = []
    for n in range(count):
        mac = base.copy()
        mac.update((TEMPLATE % n).encode())
        lines.append(ts + " hmac-sha256 " + base64.b64encode(mac.digest()).decode())
        if len(lines) == 10000:
            out.write("\n".join(lines) + "\n")
            lines = []
    if lines:
        out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
