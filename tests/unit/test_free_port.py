"""``port_pool.free_port``: ports for child processes come from outside the kernel's ephemeral range,
so no outgoing connection can take one between choosing it and the child binding it."""

from __future__ import annotations

import socket

import pytest

from pipeline.dev import ports as port_pool


def test_ports_are_below_the_ephemeral_range_bindable_and_not_repeated() -> None:
    spare = port_pool._spare_ports()
    ports = [port_pool.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    if spare is not None:
        assert all(p in spare for p in ports), (spare, sorted(ports)[-3:])


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    spare = port_pool._spare_ports()
    if spare is None:
        pytest.skip("this kernel's ephemeral range leaves no room below it")
    with socket.socket() as held:
        for taken in range(spare.stop - 1, spare.stop - 2000, -1):  # a port below the range, bound by someone else
            try:
                held.bind(("127.0.0.1", taken))
                break
            except OSError:
                continue
        held.listen()
        draws = iter([taken, taken, taken - 1000, taken - 1001, taken - 1002])
        monkeypatch.setattr(port_pool.random, "randrange", lambda a, b: next(draws))
        port = port_pool.free_port()
        assert port != taken and port in (taken - 1000, taken - 1001, taken - 1002)
