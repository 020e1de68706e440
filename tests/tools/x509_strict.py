#!/usr/bin/env python3
"""Reads PEM certificates with Python `cryptography`, whose parser is strict DER (it
refuses, among other things, encoded DEFAULT values such as basicConstraints `cA FALSE`),
and prints one JSON object per file: what a strict relying party sees.

Usage: x509_strict.py FILE...   (exit 1 and the parser's message on the first failure)
"""
import json
import sys

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID


def ext(cert, cls):
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None


def describe(path):
    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    # Touch every extension: parsing is lazy for some of them.
    names = [e.oid.dotted_string for e in cert.extensions]
    bc = ext(cert, x509.BasicConstraints)
    eku = ext(cert, x509.ExtendedKeyUsage)
    ku = ext(cert, x509.KeyUsage)
    ski = ext(cert, x509.SubjectKeyIdentifier)
    aki = ext(cert, x509.AuthorityKeyIdentifier)
    san = ext(cert, x509.SubjectAlternativeName)
    usages = []
    if ku is not None:
        for flag in ("digital_signature", "key_encipherment", "key_cert_sign", "crl_sign"):
            if getattr(ku.value, flag):
                usages.append(flag)
    eku_names = {
        ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
        ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    }
    return {
        "file": path,
        "subject": cert.subject.rfc4514_string(),
        "serial_bits": cert.serial_number.bit_length(),
        "extensions": names,
        "ca": None if bc is None else bc.value.ca,
        "basic_constraints_critical": None if bc is None else bc.critical,
        "path_length": None if bc is None else bc.value.path_length,
        "eku": None if eku is None else [eku_names.get(o, o.dotted_string) for o in eku.value],
        "key_usage": usages,
        "ski": None if ski is None else ski.value.digest.hex(),
        "aki": None if aki is None else aki.value.key_identifier.hex(),
        "san": [] if san is None else [str(n.value) for n in san.value],
    }


def main():
    for path in sys.argv[1:]:
        try:
            print(json.dumps(describe(path)))
        except Exception as e:  # the parser's refusal is the answer
            print(f"{path}: {e!r}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
