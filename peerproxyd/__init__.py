"""peerproxyd: local HTTP services for remote browsers over WebRTC data channels."""

__version__ = "0.1.0"
