"""The guard every patch passes: apply only to an aiortc/aioice version it was checked against.

A patch replaces a private method or constant of aiortc or aioice, which the next release
may rename, move, fix or change the meaning of, and the patch would then be silently wrong.
So each patch module names the versions it was read against (`CHECKED`), and `applies()`
refuses any other with one log line: that process then runs stock aiortc/aioice for that
change (docs/patches.md says what is lost) until someone re-reads the patch against the new
release and adds its version. tests/rtc/patches/test_versions.py checks that the pinned
versions (requirements.lock) are ones every patch was checked against.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Collection, Mapping

logger = logging.getLogger(__name__)

_refused: set[str] = set()


def installed(library: str) -> str:
    """The installed version of `library` (a distribution name: "aiortc", "aioice")."""
    return importlib.metadata.version(library)


def applies(patch: str, checked: Mapping[str, Collection[str]]) -> bool:
    """True if every library `patch` changes is a version in `checked`; otherwise log why the
    patch stays off (once per patch) and return False."""
    for library, versions in checked.items():
        version = installed(library)
        if version not in versions:
            name = patch.rpartition(".")[2]
            if name not in _refused:
                _refused.add(name)
                logger.error(
                    "not applying the %s patch: it was checked against %s %s, this is %s %s; "
                    "running stock %s for it (docs/patches.md)",
                    name, library, " or ".join(sorted(versions)), library, version, library,
                )
            return False
    return True
