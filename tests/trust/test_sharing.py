"""sharing: what `peerproxyd share`, `viewers` and `revoke` do with the viewer store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from peerproxyd.config import (
    DeviceSettings,
    ServiceSettings,
    Settings,
    SignalingSettings,
)
from peerproxyd.errors import ViewerStoreError
from peerproxyd.trust.sharing import base_url, share, terminal_qr, viewers_table
from peerproxyd.trust.viewer_auth import parse_link
from peerproxyd.trust.viewers import ViewerStore

DEVICE = "abcdefghijklmnopqrstuvwxyz234567"
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def settings(url: str = "ws://127.0.0.1:8787/ws", public_url: str | None = None) -> Settings:
    return Settings(
        device=DeviceSettings(state_dir="/nonexistent"),
        signaling=SignalingSettings(url=url, public_url=public_url),
        services={"camera": ServiceSettings(upstream="http://127.0.0.1:8081")},
    )


def test_base_url() -> None:
    assert base_url(settings()) == "http://localhost:8787"
    assert base_url(settings("wss://signal.example.net/ws")) == "https://signal.example.net"
    assert base_url(settings(public_url="https://p.example.net")) == "https://p.example.net"


def test_share_prints_a_link_that_opens_the_store(tmp_path: Path) -> None:
    store = ViewerStore(tmp_path)
    shared = share(settings("wss://signal.example.net:8443/ws"), store, device_id=DEVICE,
                   fingerprint=bytes(range(32)), service="camera", name="alice",
                   expires="7d", now=NOW)
    link = parse_link(shared.link)
    assert shared.link.startswith(f"https://{DEVICE}--camera.signal.example.net:8443/#v=1&")
    assert (link.device, link.service, link.name, link.fingerprint) == (
        DEVICE, "camera", "alice", bytes(range(32))
    )
    assert link.signal_url == "wss://signal.example.net:8443/ws"
    assert store.get("alice").key == link.key
    assert store.get("alice").expires == NOW + timedelta(days=7)
    assert link.token not in (tmp_path / "viewers.json").read_text()


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"service": "ha"}, "no service 'ha' in the configuration (services: camera)"),
        ({"expires": "1y"}, "expiry must be like 7d, 12h, 30m or never, got '1y'"),
        ({"name": "al ice"}, "invalid viewer name 'al ice'"),
        ({"base": "http://192.168.1.2:8787"}, "base URL host must be a DNS name"),
    ],
)
def test_share_refuses_without_touching_the_store(
    tmp_path: Path, changes: dict[str, str], error: str
) -> None:
    store = ViewerStore(tmp_path)
    args = dict(service="camera", name="alice", expires="never", base=None) | changes
    with pytest.raises(ViewerStoreError, match=error.replace("(", r"\(").replace(")", r"\)")):
        share(settings(), store, device_id=DEVICE, fingerprint=bytes(32), now=NOW, **args)
    assert not (tmp_path / "viewers.json").exists()


def test_viewers_table(tmp_path: Path) -> None:
    store = ViewerStore(tmp_path)
    assert viewers_table(store, NOW).splitlines()[1] == "(no viewers: add one with peerproxyd share)"
    store.add("bob", "camera", expires=NOW + timedelta(hours=1), now=NOW)
    store.add("alice", "camera", expires=None, now=NOW)
    store.add("carol", "camera", expires=NOW, now=NOW)
    store.revoke("bob", now=NOW)
    assert viewers_table(store, NOW).splitlines() == [
        "NAME   SERVICE  CREATED               EXPIRES               STATE",
        "alice  camera   2030-01-01T00:00:00Z  never                 active",
        "bob    camera   2030-01-01T00:00:00Z  2030-01-01T01:00:00Z  revoked 2030-01-01T00:00:00Z",
        "carol  camera   2030-01-01T00:00:00Z  2030-01-01T00:00:00Z  expired",
    ]


def test_terminal_qr_is_text() -> None:
    qr = terminal_qr("https://example.net/#v=1")
    lines = qr.splitlines()
    assert len(lines) > 10 and len({len(line) for line in lines}) == 1
    assert set(qr) <= set("█▀▄ \n")
