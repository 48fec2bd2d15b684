"""WebRTC: the peer-connection interface (transport.py) and its two backends, aiortc
(transport_aiortc.py, set up by aiortc_setup.py) and libdatachannel (transport_native.py);
ICE restarts (aiortc_ice_restart.py, sdp_restart.py); our changes to aiortc/aioice (patches/)."""
