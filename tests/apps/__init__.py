"""Real third-party apps through the browser client."""
