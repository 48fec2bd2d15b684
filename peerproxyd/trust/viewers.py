"""The viewer store: `<state_dir>/viewers.json` (docs/security.md 1.4).

    {"version": 1, "viewers": {"alice": {"key": hex(sha256(token)), "service": "camera",
      "created": ISO-8601, "expires": ISO-8601 | null, "revoked": ISO-8601 | null}}}

Written atomically (temporary file, fsync, rename) with mode 0600, under an flock so that two
`peerproxyd share` runs cannot lose each other's viewer. The token is never written. The
daemon reads the file and re-reads it when `changed()` (inode, mtime or size differ), which is
cheap enough for a poll every second.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from peerproxyd import b64u
from peerproxyd.errors import ViewerStoreError
from peerproxyd.names import valid_service_name
from peerproxyd.trust.viewer_auth import (
    TOKEN_BYTES,
    ViewerRecord,
    check_viewer_name,
    format_time,
    parse_time,
    token_key,
    valid_viewer_name,
)

FILENAME = "viewers.json"
VERSION = 1
MAX_FILE_BYTES = 4 * 1024 * 1024
"""A store this large is not one a person made with `peerproxyd share`."""

_DURATION = re.compile(r"([1-9][0-9]{0,5})([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_expires(text: str, now: datetime) -> datetime | None:
    """`7d`, `12h`, `30m` from `now`, or `never` (None); ValueError otherwise."""
    if text == "never":
        return None
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"expiry must be like 7d, 12h, 30m or never, got {text!r}")
    return now + timedelta(**{_UNITS[match[2]]: int(match[1])})


# ----- the file format (pure)
def parse_store(text: str) -> dict[str, ViewerRecord]:
    """The records of a viewers.json text; ViewerStoreError naming the first problem."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ViewerStoreError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ViewerStoreError(f'expected {{"version": {VERSION}, "viewers": {{...}}}}')
    viewers = doc.get("viewers")
    if not isinstance(viewers, dict):
        raise ViewerStoreError('"viewers" must be an object')
    return {name: _record(name, entry) for name, entry in viewers.items()}


def _record(name: str, entry: Any) -> ViewerRecord:
    where = f"viewer {name!r}"
    if not valid_viewer_name(name):
        raise ViewerStoreError(f"{where}: invalid name")
    if not isinstance(entry, dict):
        raise ViewerStoreError(f"{where}: must be an object")
    key = entry.get("key")
    if not isinstance(key, str) or not re.fullmatch(r"[0-9a-f]{64}", key):
        raise ViewerStoreError(f"{where}: key must be 64 lowercase hex digits")
    service = entry.get("service")
    if not isinstance(service, str) or not valid_service_name(service):
        raise ViewerStoreError(f"{where}: invalid service {service!r}")

    def time(field: str, optional: bool) -> datetime | None:
        value = entry.get(field)
        if value is None and optional:
            return None
        try:
            return parse_time(value) if isinstance(value, str) else parse_time("")
        except ValueError:
            raise ViewerStoreError(f"{where}: {field} must be an ISO 8601 time") from None

    created = time("created", False)
    assert created is not None
    return ViewerRecord(
        name=name, key=bytes.fromhex(key), service=service, created=created,
        expires=time("expires", True), revoked=time("revoked", True),
    )


def render_store(records: dict[str, ViewerRecord]) -> str:
    viewers = {
        r.name: {
            "key": r.key.hex(),
            "service": r.service,
            "created": format_time(r.created),
            "expires": format_time(r.expires),
            "revoked": format_time(r.revoked),
        }
        for r in sorted(records.values(), key=lambda r: r.name)
    }
    return json.dumps({"version": VERSION, "viewers": viewers}, indent=2) + "\n"


# ----- the file
_Signature = tuple[int, int, int] | None


class ViewerStore:
    """viewers.json in `state_dir`: `records` as last loaded."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / FILENAME
        self.records: dict[str, ViewerRecord] = {}
        self._signature: _Signature = None

    def _stat(self) -> _Signature:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ViewerStoreError(f"cannot read {self.path}: {exc.strerror}") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def changed(self) -> bool:
        """Whether the file differs from what was last loaded (inode, mtime, size)."""
        return self._stat() != self._signature

    def load(self) -> None:
        """Read the file (missing: no viewers). On ViewerStoreError `records` is unchanged."""
        signature = self._stat()
        if signature is None:
            records: dict[str, ViewerRecord] = {}
        else:
            try:
                if signature[2] > MAX_FILE_BYTES:
                    raise ViewerStoreError(f"larger than {MAX_FILE_BYTES} bytes")
                records = parse_store(self.path.read_text(encoding="utf-8"))
            except ViewerStoreError as exc:
                self._signature = signature  # do not re-read the same bad file every second
                raise ViewerStoreError(f"{self.path}: {exc}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ViewerStoreError(f"cannot read {self.path}: {exc}") from None
        self.records = records
        self._signature = signature

    def get(self, name: str) -> ViewerRecord | None:
        return self.records.get(name)

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, ViewerRecord]]:
        """Lock, load, let the caller change the records, save atomically."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = self.path.with_name(FILENAME + ".lock")
        with open(lock_path, "a") as lock:
            os.fchmod(lock.fileno(), 0o600)
            _own_like_directory(lock.fileno(), self.path.parent)
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.load()
            records = dict(self.records)
            yield records
            self._write(render_store(records))
            self.load()

    def _write(self, text: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".viewers.", suffix=".tmp", dir=self.path.parent)
        try:
            _own_like_directory(fd, self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp: mode 0600
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def add(
        self, name: str, service: str, *, expires: datetime | None, now: datetime
    ) -> str:
        """Create viewer `name` for `service`; return its token (shown once, never stored).
        A revoked or expired viewer of that name is replaced; an active one is an error."""
        check_viewer_name(name)
        with self.edit() as records:
            old = records.get(name)
            if old is not None and old.state(now) == "active":
                raise ViewerStoreError(
                    f"viewer {name} already exists (service {old.service}); "
                    f"revoke it first or choose another name"
                )
            token = b64u.encode(secrets.token_bytes(TOKEN_BYTES))
            records[name] = ViewerRecord(
                name=name, key=token_key(token), service=service, created=now,
                expires=expires, revoked=None,
            )
        return token

    def revoke(self, name: str, *, now: datetime) -> ViewerRecord:
        """Set `revoked` (a tombstone: the viewer is told "revoked", not "unknown")."""
        with self.edit() as records:
            old = records.get(name)
            if old is None:
                raise ViewerStoreError(f"no viewer named {name!r}")
            if old.revoked is not None:
                return old
            records[name] = replace(old, revoked=now)
        return records[name]


def _own_like_directory(fd: int, directory: Path) -> None:
    """As root (`sudo peerproxyd share`), give a new file the state directory's owner: the
    daemon may run as another user (systemd DynamicUser) and must still read it."""
    if os.geteuid() != 0:
        return
    st = directory.stat()
    if st.st_uid != 0 or st.st_gid != 0:
        os.fchown(fd, st.st_uid, st.st_gid)
