"""Short-lived TURN credentials (the "TURN REST API", coturn `use-auth-secret`).

The TURN server and the signaling server share one secret (coturn: `static-auth-secret`).
For each browser the signaling server mints

    username   = "<expiry unix time>:<name>"
    credential = base64(HMAC-SHA1(secret, username))

(draft-uberti-behave-turn-rest-00, section 2.2). coturn recomputes the HMAC and refuses the
username once its expiry time has passed, so a browser never sees a long-term TURN password and
what it does see stops working after `ttl` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

DEFAULT_TTL = 24 * 3600


@dataclass(frozen=True, kw_only=True)
class TurnCredential:
    username: str
    credential: str
    expires: int
    """Unix time after which the TURN server refuses the pair."""


def mint(
    secret: str, name: str, *, ttl: int = DEFAULT_TTL, now: float | None = None
) -> TurnCredential:
    """A username/credential pair valid for `ttl` seconds from `now` (default: the clock)."""
    if not secret:
        raise ValueError("the TURN shared secret is empty")
    if ":" in name:
        raise ValueError(f"name must not contain ':', got {name!r}")
    if ttl <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
    expires = int(now if now is not None else time.time()) + ttl
    username = f"{expires}:{name}" if name else str(expires)
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(
        username=username, credential=base64.b64encode(digest).decode("ascii"), expires=expires
    )


def ice_servers(
    urls: list[str], secret: str | None, name: str, *, ttl: int = DEFAULT_TTL,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """An RTCConfiguration `iceServers` list for one browser.

    `stun:` URLs go in as they are; `turn:`/`turns:` URLs share one freshly minted credential
    (none if there is no secret: then no TURN URL is handed out at all)."""
    stun = [u for u in urls if u.startswith("stun:")]
    turn = [u for u in urls if u.startswith(("turn:", "turns:"))]
    servers: list[dict[str, Any]] = []
    if stun:
        servers.append({"urls": stun})
    if turn and secret:
        cred = mint(secret, name, ttl=ttl, now=now)
        servers.append({"urls": turn, "username": cred.username, "credential": cred.credential})
    return servers
