"""The native client (`peerproxyd connect`): a local HTTP port whose requests travel to a
device's service (native.py), WebSockets included (websocket_listener.py)."""
