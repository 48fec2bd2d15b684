"""Every change peerproxyd makes to aiortc and aioice at run time, one module per change
(docs/patches.md). Each is installed by rtc/aiortc_setup.py or the daemon, process-wide."""
