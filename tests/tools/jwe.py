#!/usr/bin/env python3
"""Makes JWE tokens for the tests with jwcrypto, a JOSE implementation independent of
switchboard's (josekit/OpenSSL). Reads the plaintext from stdin, prints a compact token.

  jwe.py --pub KEY.pem [--alg RSA-OAEP-256] [--enc A256GCM] [--zip DEF] [--crit] [--kid ID]
"""
import argparse
import json
import sys

from jwcrypto import jwe, jwk


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pub", required=True, help="recipient public key, PEM")
    p.add_argument("--alg", default="RSA-OAEP-256")
    p.add_argument("--enc", default="A256GCM")
    p.add_argument("--zip")
    p.add_argument("--crit", action="store_true", help="add a critical header")
    p.add_argument("--kid")
    a = p.parse_args()
    with open(a.pub, "rb") as f:
        key = jwk.JWK.from_pem(f.read())
    header = {"alg": a.alg, "enc": a.enc}
    if a.zip:
        header["zip"] = a.zip
    if a.kid:
        header["kid"] = a.kid
    if a.crit:
        header["crit"] = ["exp"]
        header["exp"] = 4102444800
    token = jwe.JWE(
        sys.stdin.buffer.read(),
        protected=json.dumps(header),
        algs=[a.alg, a.enc],
    )
    token.add_recipient(key)
    print(token.serialize(compact=True))


if __name__ == "__main__":
    main()
