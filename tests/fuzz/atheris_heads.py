"""Coverage-guided fuzzing (atheris, libFuzzer) of targets.check_head.

    PYTHONPATH=. python tests/fuzz/atheris_heads.py [flags] NEW_DIR tests/fuzz/corpus/heads

New inputs go to the first directory; a crash is written as crash-<sha1> (-artifact_prefix).
"""

import shlex
import sys

import atheris

with atheris.instrument_imports(include=["peerproxyd", "tests.fuzz.targets"]):
    from tests.fuzz.targets import check_head

if __name__ == "__main__":
    # libFuzzer runs argv[0] again for -merge and -fork: make that this Python.
    argv0 = f"{shlex.quote(sys.executable)} {shlex.quote(__file__)}"
    atheris.Setup([argv0, *sys.argv[1:]], check_head)
    atheris.Fuzz()
