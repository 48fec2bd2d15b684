"""The device side: the daemon (daemon.py), one session per viewer (peer.py), streams to the
local services (router.py, websocket_upstream.py) and the status panel (panel.py)."""
