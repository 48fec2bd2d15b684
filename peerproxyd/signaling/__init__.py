"""Signaling: the rendezvous server (server.py, several instances over Redis: redis.py), its
wire format (messages.py), metrics and configuration, the client both ends use (client.py),
the browser client it serves (web.py), STUN (stun_server.py) and TURN credentials."""
