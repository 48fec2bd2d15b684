"""Coverage-guided fuzzing (atheris, libFuzzer) of targets.check_frame.

    PYTHONPATH=. python tests/fuzz/atheris_frames.py [flags] NEW_DIR tests/fuzz/corpus/frames

New inputs go to the first directory; a crash is written as crash-<sha1> (-artifact_prefix).
"""

import shlex
import sys

import atheris

with atheris.instrument_imports(include=["peerproxyd", "tests.fuzz.targets"]):
    from tests.fuzz.targets import check_frame

if __name__ == "__main__":
    # libFuzzer runs argv[0] again for -merge and -fork: make that this Python.
    argv0 = f"{shlex.quote(sys.executable)} {shlex.quote(__file__)}"
    atheris.Setup([argv0, *sys.argv[1:]], check_frame)
    atheris.Fuzz()
