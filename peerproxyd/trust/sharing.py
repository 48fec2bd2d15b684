"""`peerproxyd share`, `viewers` and `revoke`: the device owner's side of the viewer store.

The commands run next to the daemon, on the same state directory; the daemon notices every
change within a second (daemon.py's access loop).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import segno

from peerproxyd.config import Settings
from peerproxyd.errors import ViewerStoreError
from peerproxyd.trust.viewer_auth import (
    ViewerRecord,
    base_url_from_signaling,
    build_link,
    format_time,
)
from peerproxyd.trust.viewers import ViewerStore, parse_expires


@dataclass(frozen=True, kw_only=True)
class Shared:
    link: str
    record: ViewerRecord


def base_url(settings: Settings) -> str:
    """`[signaling] public_url`, else derived from `[signaling] url`."""
    return settings.signaling.public_url or base_url_from_signaling(settings.signaling.url)


def share(
    settings: Settings,
    store: ViewerStore,
    *,
    device_id: str,
    fingerprint: bytes,
    service: str,
    name: str,
    expires: str = "never",
    base: str | None = None,
    now: datetime,
) -> Shared:
    """Create viewer `name` for `service` and return its link (the token is only in it).
    ViewerStoreError for an unknown service, a bad expiry or base URL, or an active viewer
    of that name."""
    if service not in settings.services:
        raise ViewerStoreError(
            f"no service {service!r} in the configuration (services: "
            f"{', '.join(settings.services)})"
        )
    try:
        until = parse_expires(expires, now)
        base = base or base_url(settings)
        build_link(base, device=device_id, service=service, name=name,  # checks them all
                   token="A" * 43, fingerprint=fingerprint)
    except ValueError as exc:
        raise ViewerStoreError(str(exc)) from None
    token = store.add(name, service, expires=until, now=now)
    link = build_link(base, device=device_id, service=service, name=name, token=token,
                      fingerprint=fingerprint)
    record = store.get(name)
    assert record is not None
    return Shared(link=link, record=record)


def terminal_qr(text: str) -> str:
    """`text` as a QR code of Unicode half blocks, for a phone to scan off the terminal."""
    out = io.StringIO()
    segno.make(text, error="l").terminal(out=out, compact=True, border=2)
    return out.getvalue()


def viewers_table(store: ViewerStore, now: datetime) -> str:
    """name, service, created, expires, state: one viewer per line, by name."""
    rows = [("NAME", "SERVICE", "CREATED", "EXPIRES", "STATE")]
    for record in sorted(store.records.values(), key=lambda r: r.name):
        state = record.state(now)
        if state == "revoked":
            state = f"revoked {format_time(record.revoked)}"
        rows.append((record.name, record.service, format_time(record.created) or "",
                     format_time(record.expires) or "never", state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append("(no viewers: add one with peerproxyd share)")
    return "\n".join(lines) + "\n"
