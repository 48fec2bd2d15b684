"""sdp_restart: an ICE-restart offer vs a new connection's offer (sans-IO)."""

from __future__ import annotations

from peerproxyd.rtc.sdp_restart import ice_ufrag, is_restart_offer, keep_session, session_id

FP_A = ":".join(["AA"] * 32)
FP_B = ":".join(["BB"] * 32)


def offer(*, sess: str = "4611731400430051336", version: int = 2, fp: str = FP_A,
          ufrag: str = "u1") -> str:
    """An offer shaped like Chromium's (CRLF, one application section)."""
    return "\r\n".join([
        "v=0", f"o=- {sess} {version} IN IP4 127.0.0.1", "s=-", "t=0 0",
        "a=group:BUNDLE 0", "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0", f"a=ice-ufrag:{ufrag}", "a=ice-pwd:p",
        f"a=fingerprint:sha-256 {fp}", "a=setup:actpass", "a=mid:0", "a=sctp-port:5000", "",
    ])


def test_fields_are_read():
    sdp = offer()
    assert (session_id(sdp), ice_ufrag(sdp)) == ("4611731400430051336", "u1")
    assert session_id("v=0\r\no=- 1\r\n") is None  # a short o= line
    assert ice_ufrag("v=0\r\n") is None


def test_same_session_new_credentials_is_a_restart():
    assert is_restart_offer(offer(version=3, ufrag="u2"), offer(), "u1")


def test_a_reloaded_tab_is_a_new_connection():
    """The browser client keeps its certificate per tab: a reload's new connection has the
    same fingerprint and new credentials, but a new SDP session."""
    assert not is_restart_offer(offer(sess="99", ufrag="u2"), offer(), "u1")


def test_other_certificate_same_credentials_or_broken_sdp_is_not_a_restart():
    assert not is_restart_offer(offer(fp=FP_B, ufrag="u2"), offer(), "u1")
    assert not is_restart_offer(offer(version=3), offer(), "u1")  # ufrag u1 is in use
    assert not is_restart_offer(offer(ufrag="u2").replace("a=fingerprint", "a=x"), offer(), "u1")
    assert not is_restart_offer("garbage", offer(), "u1")


def test_after_a_restart_the_next_one_is_told_by_the_new_ufrag():
    first = offer()
    assert is_restart_offer(offer(version=4, ufrag="u3"), first, "u2")
    assert not is_restart_offer(offer(version=4, ufrag="u2"), first, "u2")


def test_keep_session_makes_a_later_offer_of_the_same_session():
    aiortc_like = offer(sess="3900000000", version=3900000000, ufrag="u2").replace("\r\n", "\n")
    kept = keep_session(aiortc_like, offer(version=7))
    assert session_id(kept) == "4611731400430051336"
    assert "o=- 4611731400430051336 8 IN IP4 127.0.0.1\n" in kept
    assert "\r\n" not in kept and ice_ufrag(kept) == "u2"
    assert is_restart_offer(kept, offer(), "u1")
    crlf = keep_session(offer(sess="1", ufrag="u2"), offer())
    assert crlf.count("\r\n") == offer().count("\r\n") and session_id(crlf) == session_id(offer())
    assert keep_session(aiortc_like, "no origin here") == aiortc_like
