"""Minimise the public exit IP before it is stored (privacy policy: Log Data).

Modes (``IMTEL_PII_MODE``):
- ``prefix`` (default): keep the network, /24 for IPv4 and /48 for IPv6. Exit-IP hot spots per
  network, carrier or region still show up; a single subscriber is not singled out.
- ``hash``: keyed HMAC-SHA256 of the full address, 16 hex chars. Distinct clients stay countable
  (and correlatable within the key's lifetime) but no network analysis is possible; rotate the key
  to unlink history.
- ``drop``: store nothing.

Never raises on garbage and never echoes the input: an unparsable value gives ``None`` and the
caller sends the record to the dead-letter topic with reason ``invalid_ip``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable
from functools import lru_cache

Minimiser = Callable[[str], str | None]


def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "%" in text:  # IPv6 zone ids are link-local detail, not a public exit IP (the schema rejects them)
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def prefix(text: str) -> str | None:
    """``203.0.113.7`` -> ``203.0.113.0/24``; ``2001:db8:1:2::5`` -> ``2001:db8:1::/48``."""
    addr = _parse(text)
    if addr is None:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    bits = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


def make_hasher(key: str) -> Minimiser:
    """A keyed hash minimiser; the key comes from settings (a secret), never from code."""
    secret = key.encode()

    def hashed(text: str) -> str | None:
        addr = _parse(text)
        if addr is None:
            return None
        return "h:" + hmac.new(secret, addr.packed, hashlib.sha256).hexdigest()[:16]

    return hashed


def drop(text: str) -> str | None:
    """Validate the address, store nothing."""
    return "" if _parse(text) is not None else None


def minimiser(mode: str, key: str = "", cache_size: int = 65536) -> Minimiser:
    """The minimiser for a PII mode, memoised: exit IPs repeat a lot (NAT, carrier gateways)."""
    base: Minimiser = {"prefix": prefix, "drop": drop}.get(mode) or make_hasher(key)
    return lru_cache(maxsize=cache_size)(base)
