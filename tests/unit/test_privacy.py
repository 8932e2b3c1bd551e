"""pipeline/ingest/privacy.py: prefix /24 and /48 (IPv4-mapped IPv6 as IPv4), keyed hash, drop; garbage gives
None and nothing ever raises or echoes the input; exception causes lose every address and e-mail."""

from __future__ import annotations

import ipaddress
import re

import pyarrow as pa
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline.ingest import privacy

FAST = settings(max_examples=200, deadline=None)
KEY_A = "a" * 16
KEY_B = "b" * 16


@FAST
@given(st.ip_addresses(v=4))
def test_prefix_ipv4(addr: ipaddress.IPv4Address) -> None:
    out = privacy.prefix(str(addr))
    net = ipaddress.ip_network(out)
    assert net.prefixlen == 24
    assert addr in net
    assert net.network_address.packed[3] == 0


@FAST
@given(st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None))
def test_prefix_ipv6(addr: ipaddress.IPv6Address) -> None:
    out = privacy.prefix(str(addr))
    net = ipaddress.ip_network(out)
    assert net.version == 6
    assert net.prefixlen == 48
    assert addr in net
    assert privacy.prefix(addr.exploded) == out


@FAST
@given(st.ip_addresses(v=4))
def test_prefix_ipv4_mapped(addr: ipaddress.IPv4Address) -> None:
    assert privacy.prefix(f"::ffff:{addr}") == privacy.prefix(str(addr))


@pytest.mark.parametrize(("ip", "expected"), [
    ("203.0.113.7", "203.0.113.0/24"), ("2001:db8:1:2::5", "2001:db8:1::/48"),
    ("::ffff:198.51.100.9", "198.51.100.0/24"), ("0.0.0.0", "0.0.0.0/24"), ("::1", "::/48"),
])
def test_prefix_examples(ip: str, expected: str) -> None:
    assert privacy.prefix(ip) == expected


@pytest.mark.parametrize("s", ["", "x", "1.2.3", "256.1.1.1", "1.2.3.4/24", " 1.2.3.4", "::g", "01.2.3.4"])
def test_garbage_is_none(s: str) -> None:
    assert privacy.prefix(s) is None
    assert privacy.drop(s) is None
    assert privacy.make_hasher(KEY_A)(s) is None


@FAST
@given(st.text(max_size=80))
def test_never_raises_never_echoes(s: str) -> None:
    h = privacy.make_hasher(KEY_A)
    for f in (privacy.prefix, privacy.drop, h):
        out = f(s)
        assert out is None or isinstance(out, str)
    hashed = h(s)
    assert hashed is None or (len(s) < 4 or s not in hashed)


@FAST
@given(st.ip_addresses())
def test_hash_mode(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    s = str(addr)
    ha, hb = privacy.make_hasher(KEY_A), privacy.make_hasher(KEY_B)
    out = ha(s)
    assert out is not None
    assert re.fullmatch(r"h:[0-9a-f]{16}", out)
    assert ha(s) == out == privacy.make_hasher(KEY_A)(s)
    assert hb(s) != out
    assert s not in out
    assert ha(addr.exploded) == out  # same address, other spelling -> same hash


@FAST
@given(st.ip_addresses(v=4), st.ip_addresses(v=4))
def test_hash_distinguishes_addresses(a: ipaddress.IPv4Address, b: ipaddress.IPv4Address) -> None:
    h = privacy.make_hasher(KEY_A)
    assert (h(str(a)) == h(str(b))) == (a == b)


@FAST
@given(st.ip_addresses())
def test_drop_mode(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    assert privacy.drop(str(addr)) == ""


@FAST
@given(st.one_of(st.ip_addresses().map(str), st.text(max_size=40)))
def test_cached_minimiser_matches_uncached(s: str) -> None:
    assert privacy.minimisation("prefix")(s) == privacy.prefix(s)
    assert privacy.minimisation("drop")(s) == privacy.drop(s)
    cached = privacy.minimisation("hash", KEY_A)
    assert cached(s) == privacy.make_hasher(KEY_A)(s)
    assert cached(s) == cached(s)
    assert privacy.minimisation("hash", KEY_B)(s) == privacy.make_hasher(KEY_B)(s)


def test_minimiser_cache_is_used() -> None:
    m = privacy.minimisation("prefix", cache_size=4)
    for _ in range(3):
        m("203.0.113.7")
    info = m.one.cache_info()  # type: ignore[attr-defined]
    assert (info.hits, info.misses, info.maxsize) == (2, 1, 4)


def _reference_prefix(text: str) -> str | None:
    """The obvious implementation with ``ipaddress``; the fast one must agree with it on any input."""
    if "%" in text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(ipaddress.ip_network(f"{addr}/{24 if addr.version == 4 else 48}", strict=False))


IP_ALPHABET = st.sampled_from(list("0123456789abcdefABCDEF.:%/ x\x00\u0663-"))


@settings(max_examples=800, deadline=None)
@given(st.one_of(st.text(IP_ALPHABET, max_size=45), st.ip_addresses().map(str),
                 st.ip_addresses().map(lambda a: a.exploded), st.ip_addresses(v=6).map(lambda a: a.exploded.upper())))
def test_fast_prefix_agrees_with_ipaddress(text: str) -> None:
    assert privacy.prefix(text) == _reference_prefix(text)


def _ipv6_text(groups: list[int], cut: tuple[int, int], style: str) -> str:
    """IPv6 text in the shapes senders write: full, with one ``::`` anywhere, zero-padded, upper."""
    parts = [f"{g:04x}" if style == "padded" else f"{g:x}" for g in groups]
    lo, hi = sorted(cut)
    text = ":".join(parts) if lo == hi else ":".join(parts[:lo]) + "::" + ":".join(parts[hi:])
    return text.upper() if style == "upper" else text


IPV6_TEXT = st.builds(_ipv6_text, st.lists(st.one_of(st.integers(0, 0xFFFF), st.just(0)), min_size=8, max_size=8),
                      st.tuples(st.integers(0, 8), st.integers(0, 8)), st.sampled_from(["short", "padded", "upper"]))
IPV6_MUTATED = st.builds(lambda t, i, c: t[:i] + c + t[i:], IPV6_TEXT, st.integers(0, 40),
                         st.sampled_from(list(":x0.")))


@settings(max_examples=600, deadline=None)
@given(st.one_of(IPV6_TEXT, IPV6_MUTATED))
def test_ipv6_column_path_agrees_with_ipaddress(text: str) -> None:
    """The Arrow IPv6 path (regex validity + written-out head) gives what ``ipaddress`` gives, for
    valid text in every shape and for near-misses (a colon, digit or letter inserted anywhere)."""
    network = _reference_prefix(text)
    for mode, expect in (("prefix", network), ("drop", None if network is None else "")):
        per_value = privacy.Minimisation(mode, lambda _: "per-value")
        assert privacy.minimise_column([text, "203.0.113.9"], per_value).to_pylist()[0] in (expect, "per-value")
        assert privacy.minimise_column([text], privacy.minimisation(mode)).to_pylist() == [expect]


@pytest.mark.parametrize("mode", ["prefix", "drop", "hash"])
@settings(max_examples=150, deadline=None)
@given(ips=st.lists(st.one_of(st.ip_addresses().map(str), st.text(IP_ALPHABET, max_size=20),
                              st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"), IPV6_TEXT), max_size=40))
def test_minimise_column_equals_per_value(mode: str, ips: list[str]) -> None:
    """The vectorised column path gives exactly what the per-value minimiser gives."""
    one = privacy.minimisation(mode, KEY_A)
    assert privacy.minimise_column(ips, one).to_pylist() == [one(ip) for ip in ips]


def test_common_ipv6_is_minimised_in_arrow() -> None:
    """The generator's (and most senders') IPv6 shape takes the column path, not the per-value one."""
    per_value = privacy.minimise_column(["2001:db8:a:b::1", "2001:db8:1::", "::1"],
                                        privacy.Minimisation("prefix", lambda _: "per-value"))
    assert per_value.to_pylist() == ["2001:db8:a::/48", "2001:db8:1::/48", "per-value"]


# -- exception causes: scrubbed of addresses and e-mails ---------------------------------------------
SEPARATORS = st.sampled_from([" ", "(", "[", "<", "=", ",", ";", "'", '"', "/", "\t", "\n"])
ADDRESS_TEXT = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=6).map(lambda a: a.exploded), st.ip_addresses(v=6).map(lambda a: str(a).upper()),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.ip_addresses(v=4).map(lambda a: ".".join(f"{int(o):03d}" for o in str(a).split("."))))
PII_TEXT = st.one_of(ADDRESS_TEXT, st.emails())


def scrub(causes: list[str | None]) -> list[str | None]:
    return list(privacy.scrub_causes(pa.array(causes, pa.string())).to_pylist())


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(st.tuples(st.text(max_size=30), SEPARATORS, PII_TEXT, SEPARATORS), min_size=1, max_size=4),
       tail=st.text(max_size=30))
def test_no_address_or_email_survives_in_a_cause(parts: list[tuple[str, str, str, str]], tail: str) -> None:
    """Any IPv4/IPv6 text (compressed, exploded, upper case, IPv4-mapped, zero-padded) or e-mail, between
    separators in random text, is gone from the scrubbed cause; other rows of the column are untouched."""
    cause = "".join(before + left + pii + right for before, left, pii, right in parts) + tail
    out = scrub([cause, "UserSig expired", None])
    assert out[1:] == ["UserSig expired", None]
    assert out[0] is not None
    for _, _, pii, _ in parts:
        assert pii not in out[0] and pii.lower() not in out[0].lower(), (cause, out[0])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_characters="@", exclude_categories=("Cs",)), max_size=60))
def test_a_cause_without_an_address_or_email_is_unchanged(text: str) -> None:
    """Text holding no e-mail (no ``@``), no dotted quad and no IPv6 shape (no ``::``, fewer than eight
    colon-joined groups) comes back as it is."""
    hexes = r"[0-9a-f]{1,4}"
    assume("::" not in text and not re.search(r"[0-9]{1,3}(\.[0-9]{1,3}){3}", text)
           and not re.search(rf"{hexes}(:{hexes}){{5,}}", text, re.IGNORECASE))
    assert scrub([text]) == [text]


@pytest.mark.parametrize(("cause", "expected"), [
    ("connect to 192.0.2.33:443 refused", "connect to <ip>:443 refused"),
    ("upstream [2001:db8:5:6::9]:8080 reset", "upstream [<ip>]:8080 reset"),
    ("peer ::ffff:198.51.100.23 gone", "peer <ip> gone"),
    ("user bob.smith+im@example.org not found", "user <email> not found"),
    ("admin@10.0.0.1 denied", "<email> denied"),
    ("fe80::1%eth0 down", "<ip>%eth0 down"),
    ("std::vector<int> at 12:30:45 v1.2.3 mac 00:1a:2b:3c:4d:5e", None),
    ("UserSig expired", None), ("", None),
])
def test_scrub_examples(cause: str, expected: str | None) -> None:
    assert scrub([cause]) == [cause if expected is None else expected]


def test_scrub_keeps_a_column_without_candidates_as_is() -> None:
    """No candidate row: the very same array comes back (no copy on the common path)."""
    causes = pa.array(["", "UserSig expired", None], pa.string())
    assert privacy.scrub_causes(causes) is causes
