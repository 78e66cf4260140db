"""Egress pins (``sha256:<base64url>`` of the egress's SubjectPublicKeyInfo): their form.

Kept apart from :mod:`unwall.transport.quic` (which computes and checks them) so that the
broker, which only reads pins in bridge lines and offers, does not load the QUIC stack.
"""

from __future__ import annotations

import base64
import re


def normalize_pin(pin: str) -> str:
    """Check a pin's form and return it canonical; raise ValueError with a useful message."""
    pin = pin.strip()
    prefix, _, value = pin.partition(":")
    if prefix != "sha256" or not value:
        raise ValueError(f"egress pin {pin!r} must look like 'sha256:<base64url>'")
    if not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", value):
        raise ValueError(f"egress pin {pin!r} is not valid base64url")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError as exc:
        raise ValueError(f"egress pin {pin!r} is not valid base64url") from exc
    if len(raw) != 32:
        raise ValueError(f"egress pin {pin!r} must hold a 32-byte SHA-256 digest")
    return "sha256:" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


__all__ = ["normalize_pin"]
