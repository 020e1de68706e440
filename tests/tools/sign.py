#!/usr/bin/env python3
"""Signs a webhook the way each provider documents it, independently of switchboard.

Reads one JSON object on stdin: {"scheme", "secret", "body", "timestamp", "id", "method",
"path"} and prints the headers to send as a JSON object. Standard Webhooks uses the
`standardwebhooks` package's own signer; Stripe the official `stripe` library's (and checks
the header with the library's own verification); Twilio the `twilio` library's
RequestValidator; the others Python's hmac from each
provider's documented recipe.
"""
import base64
import datetime
import hashlib
import hmac
import json
import sys

req = json.load(sys.stdin)
scheme, secret, body = req["scheme"], req["secret"], req["body"]
ts = str(req.get("timestamp", ""))
raw = body.encode()


def mac(key, msg, algo=hashlib.sha256):
    return hmac.new(key, msg, algo)


if scheme == "standard-webhooks":
    from standardwebhooks.webhooks import Webhook

    when = datetime.datetime.fromtimestamp(int(ts), tz=datetime.timezone.utc)
    sig = Webhook(secret).sign(req["id"], when, body)
    headers = {"webhook-id": req["id"], "webhook-timestamp": ts, "webhook-signature": sig}
elif scheme == "stripe":
    import stripe

    header = stripe.WebhookSignature.generate_signature_header(body, secret, int(ts))
    if req.get("check", True):
        stripe.WebhookSignature.verify_header(body, header, secret, tolerance=None)
    headers = {"Stripe-Signature": header}
elif scheme == "github":
    # docs.github.com: "sha256=" + hex HMAC-SHA256(secret, payload)
    headers = {"X-Hub-Signature-256": "sha256=" + mac(secret.encode(), raw).hexdigest()}
elif scheme == "shopify":
    # shopify.dev: base64 HMAC-SHA256(secret, raw body)
    digest = mac(secret.encode(), raw).digest()
    headers = {"X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode()}
elif scheme == "slack":
    # api.slack.com: "v0=" + hex HMAC-SHA256(signing secret, "v0:" + ts + ":" + body)
    basestring = f"v0:{ts}:{body}".encode()
    headers = {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": "v0=" + mac(secret.encode(), basestring).hexdigest(),
    }
elif scheme == "twilio":
    # Twilio's own library: RequestValidator over the URL it called and the form fields.
    import urllib.parse

    from twilio.request_validator import RequestValidator

    url = "https://hooks.example.com" + req["path"]
    params = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
    validator = RequestValidator(secret)
    sig = validator.compute_signature(url, params)
    assert validator.validate(url, params, sig)
    headers = {"X-Twilio-Signature": sig}
elif scheme == "acme":
    # A hand-configured provider: HMAC-SHA512 with a hex key over method, path,
    # timestamp and body on separate lines, base64 after "sig=".
    msg = f"{req['method']}\n{req['path']}\n{ts}\n".encode() + raw
    digest = mac(bytes.fromhex(secret), msg, hashlib.sha512).digest()
    headers = {"X-Acme-Timestamp": ts, "X-Acme-Signature": "sig=" + base64.b64encode(digest).decode()}
elif scheme == "legacy":
    # A hand-configured legacy provider: hex HMAC-SHA1 over the body.
    headers = {"X-Legacy-Sig": mac(secret.encode(), raw, hashlib.sha1).hexdigest()}
else:
    sys.exit(f"unknown scheme {scheme}")
print(json.dumps(headers))
