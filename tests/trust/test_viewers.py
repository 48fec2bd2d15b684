"""viewers: the viewer store file (docs/security.md 1.4)."""

from __future__ import annotations

import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from peerproxyd.errors import ViewerStoreError
from peerproxyd.trust.viewer_auth import token_key
from peerproxyd.trust.viewers import ViewerStore, parse_expires, parse_store, render_store

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def test_add_writes_hashed_key_atomically_with_mode_0600(tmp_path: Path) -> None:
    store = ViewerStore(tmp_path / "state")
    token = store.add("alice", "camera", expires=NOW + timedelta(days=7), now=NOW)
    path = tmp_path / "state" / "viewers.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text
    assert json.loads(text) == {
        "version": 1,
        "viewers": {
            "alice": {
                "key": token_key(token).hex(),
                "service": "camera",
                "created": "2030-01-01T12:00:00Z",
                "expires": "2030-01-08T12:00:00Z",
                "revoked": None,
            }
        },
    }
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    other = ViewerStore(tmp_path / "state")
    other.load()
    assert other.get("alice") == store.get("alice")


def test_revoke_leaves_a_tombstone_and_add_replaces_it(tmp_path: Path) -> None:
    store = ViewerStore(tmp_path)
    first = store.add("alice", "camera", expires=None, now=NOW)
    with pytest.raises(ViewerStoreError, match="already exists"):
        store.add("alice", "ha", expires=None, now=NOW)
    record = store.revoke("alice", now=NOW + timedelta(minutes=1))
    assert record.revoked == NOW + timedelta(minutes=1)
    assert record.state(NOW + timedelta(minutes=2)) == "revoked"
    assert store.revoke("alice", now=NOW + timedelta(hours=1)).revoked == record.revoked
    second = store.add("alice", "ha", expires=None, now=NOW)
    assert second != first and store.get("alice").service == "ha"
    with pytest.raises(ViewerStoreError, match="no viewer named 'bob'"):
        store.revoke("bob", now=NOW)


def test_state_and_expiry() -> None:
    assert parse_expires("never", NOW) is None
    assert parse_expires("7d", NOW) == NOW + timedelta(days=7)
    assert parse_expires("12h", NOW) == NOW + timedelta(hours=12)
    assert parse_expires("30m", NOW) == NOW + timedelta(minutes=30)
    for bad in ("0d", "7", "1w", "-1d", "7 d", ""):
        with pytest.raises(ValueError, match="7d, 12h, 30m or never"):
            parse_expires(bad, NOW)


def test_changed_notices_every_rewrite(tmp_path: Path) -> None:
    store = ViewerStore(tmp_path)
    assert not store.changed()  # no file, nothing loaded
    writer = ViewerStore(tmp_path)
    writer.add("alice", "camera", expires=None, now=NOW)
    assert store.changed()
    store.load()
    assert not store.changed()
    writer.revoke("alice", now=NOW)  # same size: the rename gives a new inode
    assert store.changed()
    store.load()
    assert store.get("alice").revoked == NOW
    (tmp_path / "viewers.json").unlink()
    assert store.changed()
    store.load()
    assert store.records == {}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{", "not JSON"),
        ('{"version": 2, "viewers": {}}', '"version": 1'),
        ('{"version": 1, "viewers": []}', '"viewers" must be an object'),
        ('{"version": 1, "viewers": {"a b": {}}}', "viewer 'a b': invalid name"),
        ('{"version": 1, "viewers": {"a": 1}}', "viewer 'a': must be an object"),
        ('{"version": 1, "viewers": {"a": {"key": "AB"}}}', "key must be 64 lowercase hex"),
        ('{"version": 1, "viewers": {"a": {"key": "' + "0" * 64 + '", "service": "A"}}}',
         "invalid service 'A'"),
        ('{"version": 1, "viewers": {"a": {"key": "' + "0" * 64
         + '", "service": "cam", "created": "2030-01-01T00:00:00"}}}',
         "created must be an ISO 8601 time"),
        ('{"version": 1, "viewers": {"a": {"key": "' + "0" * 64
         + '", "service": "cam", "created": "2030-01-01T00:00:00Z", "expires": 5}}}',
         "expires must be an ISO 8601 time"),
    ],
)
def test_malformed_store(text: str, error: str) -> None:
    with pytest.raises(ViewerStoreError, match=error.replace("[", r"\[")):
        parse_store(text)


def test_bad_file_keeps_the_last_good_records(tmp_path: Path) -> None:
    store = ViewerStore(tmp_path)
    store.add("alice", "camera", expires=None, now=NOW)
    good = dict(store.records)
    (tmp_path / "viewers.json").write_text("{ broken")
    assert store.changed()
    with pytest.raises(ViewerStoreError, match="viewers.json: not JSON"):
        store.load()
    assert store.records == good
    assert not store.changed()  # the same bad file is not re-read every poll
    with pytest.raises(ViewerStoreError):  # and share/revoke refuse to overwrite it
        store.add("bob", "camera", expires=None, now=NOW)
    assert (tmp_path / "viewers.json").read_text() == "{ broken"


def test_render_parse_round_trip(tmp_path: Path) -> None:
    store = ViewerStore(tmp_path)
    store.add("b.o_b-1", "ha", expires=NOW, now=NOW)
    store.add("alice", "camera", expires=None, now=NOW)
    store.revoke("alice", now=NOW)
    assert parse_store(render_store(store.records)) == store.records


def test_concurrent_adds_lose_nothing(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            ViewerStore(tmp_path).add(f"v{i}", "camera", expires=None, now=NOW)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    store = ViewerStore(tmp_path)
    store.load()
    assert sorted(store.records) == sorted(f"v{i}" for i in range(8))
    assert os.stat(tmp_path / "viewers.json.lock").st_mode & 0o077 == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files for another user")
def test_root_writes_files_the_daemon_user_can_read(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 4321, 4321)  # the daemon's (dynamic) user owns its state directory
    ViewerStore(state).add("alice", "camera", expires=None, now=NOW)
    for name in ("viewers.json", "viewers.json.lock"):
        st = (state / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 4321, 0o600)
