"""The tunnel's IO shell, shared by both ends: one data channel <-> one ProxyConnection
(channel.py), the replies peerproxyd makes itself (replies.py), WebSockets over streams
(websocket_relay.py)."""
