"""Telling an ICE-restart offer from a new connection's offer (sans-IO; docs/network.md).

A restart offer comes from the viewer's live peer connection: the same DTLS certificate
(fingerprint), the same SDP session (the `o=` line's sess-id, RFC 3264 section 8: "the
session id MUST remain the same" in later offers of a session) and new ICE credentials
(RFC 8445 section 9). The fingerprint alone is not enough: the browser client keeps one
certificate per tab (docs/security.md 1.5), so a reloaded tab's NEW connection has the old
fingerprint too; only its sess-id differs.

aiortc writes a fresh `o=` line for every description, so our native client's restart offer
carries its previous offer's sess-id explicitly (`keep_session`)."""

from __future__ import annotations

from peerproxyd.trust.viewer_auth import fingerprint_from_sdp


def session_id(sdp: str) -> str | None:
    """The sess-id of the SDP's `o=` line (`o=<user> <sess-id> <version> ...`)."""
    for line in sdp.splitlines():
        if line.startswith("o="):
            fields = line[2:].split()
            return fields[1] if len(fields) >= 6 else None
    return None


def ice_ufrag(sdp: str) -> str | None:
    """The first `a=ice-ufrag` (session or media level; peerproxyd negotiates one section)."""
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return line.removeprefix("a=ice-ufrag:").strip() or None
    return None


def keep_session(sdp: str, previous: str) -> str:
    """`sdp` with the `o=` line's user and sess-id of `previous` (the session's last offer)
    and a version above its: a later offer of the same session, as RFC 3264 asks."""
    origin = next((line for line in previous.splitlines() if line.startswith("o=")), None)
    if origin is None:
        return sdp
    user, sess_id, version, *rest = origin[2:].split()
    lines = sdp.split("\r\n") if "\r\n" in sdp else sdp.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("o="):
            net = line[2:].split()[3:]
            lines[i] = "o=" + " ".join([user, sess_id, str(int(version) + 1), *net])
            break
    return ("\r\n" if "\r\n" in sdp else "\n").join(lines)


def is_restart_offer(offer: str, first_offer: str, current_ufrag: str | None) -> bool:
    """True if `offer` restarts ICE on the session that `first_offer` began (same fingerprint,
    same sess-id, an ICE ufrag other than `current_ufrag`, the one in use). False for a new
    connection, or for an SDP too broken to tell (it is then refused as a new offer would be)."""
    try:
        same_certificate = fingerprint_from_sdp(offer) == fingerprint_from_sdp(first_offer)
    except ValueError:
        return False
    ufrag = ice_ufrag(offer)
    return (
        same_certificate
        and session_id(offer) is not None
        and session_id(offer) == session_id(first_offer)
        and ufrag is not None
        and ufrag != current_ufrag
    )
