"""The device on its host: systemd notifications (notify.py), mDNS on the LAN (mdns.py),
watching the host's addresses (netwatch.py)."""
