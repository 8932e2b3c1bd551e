"""``worker/relocations.py``: which pages it may give back (pure parts), checked against real libraries."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.ingest import _fastlog
from pipeline.worker.relocations import Mapping, dead_sections, page_ranges, parse_maps

LIB = Path(_fastlog.__file__)


def read_of(path: Path):  # type: ignore[no-untyped-def]
    data = path.read_bytes()
    return data[:64], lambda offset, size: data[offset:offset + size]


def readelf_sections(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (file offset, size) as binutils sees them."""
    out = {}
    for line in subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        parts = line.replace("[ ", "[").split()
        if len(parts) > 6 and parts[0].startswith("[") and parts[1].startswith("."):
            out[parts[1]] = (int(parts[4], 16), int(parts[5], 16))
    return out


def test_finds_the_dynamic_relocation_table_and_nothing_else() -> None:
    header, read = read_of(LIB)
    found = dead_sections(header, read)
    try:
        expected = readelf_sections(LIB)
    except FileNotFoundError:
        pytest.skip("readelf is not installed")
    assert found == [expected[".rela.dyn"]]
    assert expected[".rela.plt"] not in found  # the lazily bound PLT reads its table at run time


@pytest.mark.parametrize("header", [b"", b"\x7fELF" + b"\0" * 60, b"MZ" + b"\0" * 62,
                                    b"\x7fELF\x01\x01" + b"\0" * 58,  # 32-bit
                                    b"\x7fELF\x02\x02" + b"\0" * 58])  # big-endian
def test_anything_but_a_64_bit_little_endian_elf_gives_nothing(header: bytes) -> None:
    assert dead_sections(header, lambda offset, size: b"") == []


@given(st.binary(min_size=64, max_size=64), st.binary(max_size=4096))
def test_garbage_never_raises(header: bytes, rest: bytes) -> None:
    header = b"\x7fELF\x02\x01" + header[6:]
    blob = header + rest
    assert isinstance(dead_sections(header, lambda offset, size: blob[offset:offset + size]), list)


def test_truncated_section_table_gives_nothing() -> None:
    header, read = read_of(LIB)
    assert dead_sections(header, lambda offset, size: read(offset, size)[: size // 2]) == []


MAPS = """\
7f0000000000-7f0000010000 r--p 00000000 08:01 42 /lib/x.so
7f0000010000-7f0000020000 r-xp 00010000 08:01 42 /lib/x.so
7f0000020000-7f0000021000 rw-p 00020000 08:01 42 /lib/x.so
7f0000030000-7f0000031000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00001000 r--p 00000000 00:00 0 [vvar]
"""


def test_parse_maps_keeps_file_backed_lines() -> None:
    maps = parse_maps(MAPS.splitlines(keepends=True))
    assert [(m.start, m.perms, m.offset, m.path) for m in maps] == [
        (0x7F0000000000, "r--p", 0, "/lib/x.so"), (0x7F0000010000, "r-xp", 0x10000, "/lib/x.so"),
        (0x7F0000020000, "rw-p", 0x20000, "/lib/x.so")]


def test_page_ranges_take_whole_pages_inside_the_section_only() -> None:
    maps = parse_maps(MAPS.splitlines())
    # bytes 0x840..0x5840 of the file: pages 0x1000..0x5000 lie wholly inside
    assert page_ranges([(0x840, 0x5000)], maps, page=0x1000) == [(0x7F0000001000, 0x4000)]
    assert page_ranges([(0x840, 0x378)], maps, page=0x1000) == []  # under a page: nothing
    assert page_ranges([(0x10000, 0x2000)], maps, page=0x1000) == []  # executable mapping: never
    assert page_ranges([(0x20000, 0x1000)], maps, page=0x1000) == []  # writable mapping: never
    assert page_ranges([(0xF000, 0x2000)], maps, page=0x1000) == []  # crosses out of the mapping


@given(st.integers(0, 0xFFFF), st.integers(0, 0x10000))
def test_page_ranges_never_leave_the_section(offset: int, size: int) -> None:
    maps = [Mapping(0x7F0000000000, 0x7F0000020000, "r--p", 0, "/lib/x.so")]
    for address, length in page_ranges([(offset, size)], maps, page=0x1000):
        assert address % 0x1000 == 0 and length % 0x1000 == 0 and length > 0
        assert 0x7F0000000000 + offset <= address and address + length <= 0x7F0000000000 + offset + size


def test_section_headers_are_read_as_elf64_says() -> None:
    """A hand-built ELF: one allocated RELA section named .rela.dyn, one .rela.plt, one unallocated."""
    names = b"\0.rela.dyn\0.rela.plt\0.shstrtab\0"
    shoff = 64 + len(names)
    sections = [(0, 0, 0, 0, 0, 0), (1, 4, 2, 0x1000, 0x1000, 0x3000), (11, 4, 0x42, 0x4000, 0x4000, 0x800),
                (21, 3, 0, 0, 64, len(names))]
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, len(sections), 3)
    table = b"".join(struct.pack("<IIQQQQIIQQ", n, t, f, a, o, s, 0, 0, 8, 24) for n, t, f, a, o, s in sections)
    blob = bytes(header) + names + table
    assert dead_sections(bytes(header), lambda offset, size: blob[offset:offset + size]) == [(0x1000, 0x3000)]
    unallocated = bytearray(blob)
    struct.pack_into("<Q", unallocated, shoff + 64 + 8, 0)  # .rela.dyn's sh_flags: no SHF_ALLOC
    assert dead_sections(bytes(header), lambda offset, size: bytes(unallocated[offset:offset + size])) == []
