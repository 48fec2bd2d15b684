"""How many cases each fuzz target gets, and how many it ran.

One hypothesis profile drives every property of tests/fuzz/: `ci` (the default, so `make test`
and CI use it) gives each target at least FLOOR cases; PEERPROXYD_FUZZ_PROFILE=quick (a fast
local loop) or =long (`make fuzz`) choose another. The profile is applied to these tests only
(through FUZZ), never loaded globally, so other hypothesis tests keep their own settings.
conftest.py prints COUNTS at the end of the run; test_targets.py fails a CI run that fell short.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

FLOOR = 10_000
"""Cases per target per CI run (issue 17)."""
EXAMPLES = {"ci": FLOOR, "quick": 300, "long": 100_000}
PROFILE = os.environ.get("PEERPROXYD_FUZZ_PROFILE", "ci")
TARGETS = ("frames", "signaling", "viewer_auth", "websocket")

for _name, _examples in EXAMPLES.items():
    settings.register_profile(
        f"peerproxyd-fuzz-{_name}", max_examples=_examples, deadline=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
FUZZ = settings.get_profile(f"peerproxyd-fuzz-{PROFILE}")
REQUIRED = min(FLOOR, EXAMPLES[PROFILE])
"""The cases a target must have run for the count check to pass."""

COUNTS: Counter[str] = Counter()


def ran(target: str) -> None:
    """Count one case of `target` (called first thing in each property's body)."""
    COUNTS[target] += 1
