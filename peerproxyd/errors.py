"""The whole exception tree of peerproxyd."""

from __future__ import annotations


class PeerProxyError(Exception):
    """Base class of every error peerproxyd raises on purpose."""


class ConfigError(PeerProxyError):
    """The configuration file is missing, unreadable or invalid."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class IdentityError(PeerProxyError):
    """The device identity in the state directory cannot be read, created or trusted."""


class RegistrationError(PeerProxyError):
    """A device registration failed a check of docs/security.md 1.2; `code` is always
    `unauthorized` and the message says which check failed."""

    code = "unauthorized"


class SignalingError(PeerProxyError):
    """The signaling server refused us or sent something we cannot use."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class UpstreamError(PeerProxyError):
    """A local service could not be reached; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ProtocolError(PeerProxyError):
    """A packet-protocol rule was broken.

    `code` is the RESET error code sent to the peer (see docs/protocol.md) and `stream_id`
    the stream it concerns (0: the connection as a whole).
    """

    def __init__(self, message: str, *, code: int = 1, stream_id: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.stream_id = stream_id


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class StreamResetError(PeerProxyError, ConnectionResetError):
    """A stream was aborted, by the peer (`remote`) or by us for the peer's protocol error."""

    def __init__(self, stream_id: int, code: int, reason: str, *, remote: bool) -> None:
        side = "peer" if remote else "us"
        super().__init__(f"stream {stream_id} reset by {side}: code {code} {reason}".rstrip())
        self.stream_id = stream_id
        self.code = code
        self.reason = reason
        self.remote = remote


class PeerGoneError(PeerProxyError, ConnectionError):
    """The data channel closed or the peer stopped answering heartbeats."""


class LinkError(PeerProxyError, ValueError):
    """A share link is malformed (docs/security.md 1.3)."""


class FingerprintError(PeerProxyError, ValueError):
    """An SDP lacks a usable DTLS fingerprint, or it is not the one the link pins."""


class AuthError(PeerProxyError):
    """Viewer authentication failed; `code` is the auth-error code of docs/security.md 1.5
    (`unauthorized`, `revoked`, `expired`, `bad-auth`, `too-many-peers`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ViewerStoreError(PeerProxyError):
    """The viewer store (viewers.json) cannot be read, parsed or written."""


class IceRestartError(PeerProxyError, RuntimeError):
    """An ICE restart that cannot start: no live ICE transport, the remote did not restart,
    or a backend without ICE restarts (the caller falls back to a new connection)."""
