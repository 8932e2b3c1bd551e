"""Find full client IPs (and given e-mail addresses) in text the pipeline emitted, in every textual form
an IP can take.

A leak is rarely only the literal string that was produced: code may log ``ipaddress`` objects
(compressed or exploded IPv6), integers, packed bytes as hex, IPv4-mapped IPv6, reverse-DNS names, or
a normalised value (zero-padded octets, upper case, dashes as in host names). A packed IPv4 address as bare hex
(``cb007107``) is only recognised with its ``0x`` prefix: eight bare hex digits occur in ordinary
log lines (member and trace ids) too often to tell apart. ``Scanner`` extracts
every token that could be an address in one of those forms, normalises it and looks it up among the
produced addresses, so a scan is linear in the text however many addresses were produced. Tokens are
taken at boundaries: the stored network ``203.0.113.0/24`` is not the client ``203.0.113.0``, and
``203.0.113.1`` is not found inside ``203.0.113.15``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# One pattern per kind of token, each run over the whole text (tokens of different kinds overlap:
# ``ip:203.0.113.7:`` is a failed IPv6 token and a good dotted one).
_TOKENS = {kind: re.compile(pattern, re.IGNORECASE) for kind, pattern in {
    "ptr4": r"(?<![0-9.])(?:\d{1,3}\.){4}in-addr\.arpa",
    "ptr6": r"(?<![0-9a-z.])(?:[0-9a-f]\.){32}ip6\.arpa",
    "dotted": r"(?<![0-9a-z.\-_])\d{1,3}(?P<sep>[.\-_])\d{1,3}(?P=sep)\d{1,3}(?P=sep)\d{1,3}(?![0-9]|[.\-_][0-9])",
    "v6": r"(?<![0-9a-f:.])[0-9a-f]{0,4}:[0-9a-f:.]*:[0-9a-f:.]*",
    "hex32": r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])",
    "hex8": r"0x[0-9a-f]{8}(?![0-9a-z])",
    "int": r"(?<![0-9a-z.])\d{8,10}(?![0-9]|\.[0-9])",
}.items()}


def _canonical(addr: Address) -> Address:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _v6(token: str) -> Address | None:
    """An IPv6 token, possibly glued to punctuation (``ip:2001:db8::5:`` in a log line)."""
    for candidate in (token, token.rstrip(":."), token[1:], token[1:].rstrip(":.")):
        try:
            return _canonical(ipaddress.IPv6Address(candidate))
        except ValueError:
            continue
    return None


def parse_token(kind: str, token: str) -> Address | None:
    """The address a token of ``kind`` denotes, or None."""
    try:
        if kind == "ptr4":
            return ipaddress.IPv4Address(".".join(reversed(token.split(".")[:4])))
        if kind == "ptr6":
            return _canonical(ipaddress.IPv6Address(bytes.fromhex("".join(reversed(token.split(".")[:32])))))
        if kind == "dotted":
            octets = [int(o) for o in re.split(r"[.\-_]", token)]
            return ipaddress.IPv4Address(".".join(map(str, octets))) if max(octets) <= 255 else None
        if kind == "v6":
            return _v6(token)
        if kind == "hex32":
            return _canonical(ipaddress.IPv6Address(bytes.fromhex(token)))
        if kind == "hex8":
            return ipaddress.IPv4Address(bytes.fromhex(token[2:]))
        if kind == "int":
            return ipaddress.IPv4Address(int(token))
    except ValueError:
        return None
    return None


def renderings(text: str) -> list[str]:
    """Renderings of one address that the scanner must recognise (used to test the scanner)."""
    addr = ipaddress.ip_address(text)
    out = [str(addr), str(addr).upper(), addr.exploded, addr.reverse_pointer]
    if isinstance(addr, ipaddress.IPv4Address):
        octets = str(addr).split(".")
        mapped = ipaddress.IPv6Address(f"::ffff:{addr}")
        out += [".".join(f"{int(o):03d}" for o in octets), "-".join(octets), "_".join(octets), str(int(addr)),
                "0x" + addr.packed.hex(), f"::ffff:{addr}", str(mapped), mapped.exploded]
    else:
        out += [addr.packed.hex(), ":".join(g.lstrip("0") or "0" for g in addr.exploded.split(":"))]
    return out


@dataclass(frozen=True)
class Hit:
    """One full IP found: which address, the text as found, where."""

    address: str
    found: str
    source: str
    context: str


class Scanner:
    """Searches texts for any rendering of a set of addresses, and for e-mail addresses (case-insensitive,
    as written: an e-mail has no other common rendering)."""

    def __init__(self, addresses: Iterable[str], emails: Iterable[str] = ()) -> None:
        self.targets: dict[Address, str] = {}
        for text in addresses:
            try:
                self.targets.setdefault(_canonical(ipaddress.ip_address(text)), text)
            except ValueError:
                continue  # not an address (an invalid_ip test value): nothing to find
        assert self.targets, "no valid address to scan for"
        self.emails = sorted({e.lower() for e in emails})
        self._email = re.compile("|".join(map(re.escape, self.emails)), re.IGNORECASE) if self.emails else None

    def scan(self, text: str, source: str) -> list[Hit]:
        hits = self._email_hits(text, source)
        for kind, pattern in _TOKENS.items():
            for m in pattern.finditer(text):
                addr = parse_token(kind, m.group(0))
                if addr is not None and addr in self.targets:
                    hits.append(Hit(self.targets[addr], m.group(0), source,
                                    text[max(0, m.start() - 80):m.end() + 80]))
        return hits

    def _email_hits(self, text: str, source: str) -> list[Hit]:
        if self._email is None:
            return []
        return [Hit(m.group(0).lower(), m.group(0), source, text[max(0, m.start() - 80):m.end() + 80])
                for m in self._email.finditer(text)]

    def scan_all(self, texts: dict[str, str]) -> list[Hit]:
        """Hits over several named texts (log files, endpoints, headers)."""
        return [hit for source, text in texts.items() for hit in self.scan(text, source)]
