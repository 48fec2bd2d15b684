"""Real third-party apps behind the daemon, driven by Chromium through a share link."""
