"""Regression tests for rtc/patches/aioice_tuning.py: they fail if aioice renames what we set."""

from __future__ import annotations

import socket

import aioice
import aioice.ice
import aioice.turn
import pytest

from peerproxyd.rtc.patches import aioice_tuning


@pytest.fixture(autouse=True)
def restore():
    yield
    aioice_tuning.configure()


def test_stock_aioice_skips_loopback():
    """Why the allow list exists: aioice never offers 127.0.0.1 by itself."""
    aioice_tuning.configure()
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)


def test_allow_list_limits_host_addresses_to_loopback():
    aioice_tuning.configure(host_addresses=["127.0.0.1"])
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(use_ipv4=False, use_ipv6=True) == []


def test_allow_list_ignores_addresses_the_machine_lacks():
    aioice_tuning.configure(host_addresses=["192.0.2.77", "127.0.0.1"])
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]


async def test_gathered_candidates_and_socket_buffer():
    aioice_tuning.configure(host_addresses=["127.0.0.1"], receive_buffer=4 * 1024 * 1024)
    conn = aioice.Connection(ice_controlling=True, components=1)
    try:
        await conn.gather_candidates()
        hosts = {(c.type, c.host) for c in conn.local_candidates}
        assert hosts == {("host", "127.0.0.1")}
        sock = conn._protocols[0].transport.get_extra_info("socket")
        # Linux doubles the requested size; capped by net.core.rmem_max.
        with open("/proc/sys/net/core/rmem_max") as f:
            rmem_max = int(f.read())
        expected = min(4 * 1024 * 1024, rmem_max)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= expected
        assert expected > 256 * 1024 or rmem_max <= 256 * 1024
    finally:
        await conn.close()


def test_stock_buffer_size_is_what_we_override():
    aioice_tuning.configure(receive_buffer=123456)
    assert aioice.turn.UDP_SOCKET_BUFFER_SIZE == 123456
