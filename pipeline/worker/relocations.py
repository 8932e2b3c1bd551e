"""Give back the pages of loaded libraries' relocation tables, which nothing reads after loading.

The dynamic loader applies a shared library's dynamic relocations (``.rela.dyn``) once, while it loads
the library, reading the whole table through the library's read-only mapping; afterwards the table
is dead, yet its pages stay in the process's resident set until the kernel needs memory. chDB's
library carries a 28 MB table (``readelf -S _chdb.abi3.so``), all of it resident after ``import chdb``
(``/proc/self/pagemap``: 6,827 of 6,827 pages present). ``MADV_DONTNEED`` on that range drops those
pages: 28 MB less resident memory in every process that hosts chDB (the embedded worker, ``imtel
engine``), for no CPU; were a page read again, the kernel would read it back from the file, which is
unchanged (the mapping is private and was never written).

This touches only ``.rela.dyn``/``.rel.dyn``: sections the loader alone reads, in a read-only private
mapping of the library. The lazily bound PLT's table (``.rela.plt``) is read at run time and left alone,
and so is everything a program runs or reads (code, read-only data): dropping those would only move the
figure until they were faulted back.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
SHF_ALLOC = 0x2
SHT_RELA, SHT_REL = 4, 9
DEAD_SECTIONS = frozenset({b".rela.dyn", b".rel.dyn"})
MIN_BYTES = 64 * 1024  # smaller tables are not worth a system call


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of ``/proc/self/maps`` backed by a file."""

    start: int
    end: int
    perms: str
    offset: int
    path: str


def parse_maps(lines: Iterable[str]) -> list[Mapping]:
    """File-backed mappings of ``/proc/PID/maps`` lines (anonymous and special ones are skipped)."""
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        lo, _, hi = parts[0].partition("-")
        out.append(Mapping(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16), parts[5].rstrip("\n")))
    return out


def dead_sections(header: bytes, read: Any) -> list[tuple[int, int]]:
    """File ranges ``(offset, size)`` of an ELF64 little-endian library's dynamic relocation tables.

    ``header`` is the file's first 64 bytes; ``read(offset, size)`` reads more of it. Anything that is
    not such a library gives no range."""
    if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
        return []
    shoff, = struct.unpack_from("<Q", header, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", header, 0x3A)
    if shentsize != 64 or not 0 < shnum < 65_280 or shstrndx >= shnum:
        return []
    table = read(shoff, shnum * 64)
    if len(table) != shnum * 64:
        return []
    sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * 64) for i in range(shnum)]
    names_at, names_size = sections[shstrndx][4], sections[shstrndx][5]
    names = read(names_at, min(names_size, 1 << 20))
    out = []
    for name_at, kind, flags, _addr, offset, size, *_ in sections:
        name = names[name_at:names.find(b"\0", name_at)] if name_at < len(names) else b""
        if name in DEAD_SECTIONS and kind in (SHT_RELA, SHT_REL) and flags & SHF_ALLOC:
            out.append((offset, size))
    return out


def page_ranges(sections: Iterable[tuple[int, int]], mappings: Iterable[Mapping], page: int = mmap.PAGESIZE
                ) -> list[tuple[int, int]]:
    """Whole pages ``(address, length)`` holding only those file ranges, in read-only private mappings."""
    out = []
    maps = [m for m in mappings if m.perms == "r--p"]
    for offset, size in sections:
        for m in maps:
            if m.offset <= offset and offset + size <= m.offset + (m.end - m.start):
                lo = m.start + (offset - m.offset)
                first, last = -(-lo // page) * page, (lo + size) // page * page
                if last - first >= page:
                    out.append((first, last - first))
                break
    return out


def release(min_bytes: int = MIN_BYTES) -> int:
    """Drop the resident pages of every loaded library's relocation tables of at least ``min_bytes``;
    returns the bytes advised away. Best effort: where something does not fit (no ``/proc``, another
    libc, an odd library), nothing is done."""
    try:
        with open("/proc/self/maps") as f:
            mappings = parse_maps(f)
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for path in sorted({m.path for m in mappings}):
        ranges: list[tuple[int, int]] = []
        with contextlib.suppress(OSError), open(path, "rb") as lib:
            def read(offset: int, size: int, lib: Any = lib) -> bytes:
                lib.seek(offset)
                return bytes(lib.read(size))
            sections = [s for s in dead_sections(read(0, 64), read) if s[1] >= min_bytes]
            ranges = page_ranges(sections, [m for m in mappings if m.path == path])
        for address, length in ranges:
            if madvise(address, length, MADV_DONTNEED) == 0:
                released += length
    if released:
        log.debug("gave back %.1f MB of loaded libraries' relocation tables", released / 2**20)
    return released
