"""Coverage-guided fuzzing (atheris, libFuzzer) of targets.check_head.

    PYTHONPATH=. python tests/fuzz/atheris_heads.py [flags] NEW_DIR tests/fuzz/corpus/heads

New inputs go to the first directory; a crash is written as crash-<sha1> (-artifact_prefix).
heads.dict (JSON keys, the headers and escapes the proxy policy looks at) is always used.
"""

import shlex
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["peerproxyd", "tests.fuzz.targets"]):
    from tests.fuzz.targets import check_head

if __name__ == "__main__":
    # libFuzzer runs argv[0] again for -merge and -fork: make that this Python.
    argv0 = f"{shlex.quote(sys.executable)} {shlex.quote(__file__)}"
    dictionary = f"-dict={Path(__file__).with_name('heads.dict')}"
    atheris.Setup([argv0, dictionary, *sys.argv[1:]], check_head)
    atheris.Fuzz()
