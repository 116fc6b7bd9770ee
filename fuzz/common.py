"""Shared bits of the atheris harnesses (see fuzz/README.md and docs/reliability.md).

Every harness feeds fuzzed bytes to one parser and lets only DumpsaverError
subclasses (the documented, expected failures) through; anything else is a crash
that libFuzzer reports and saves as crash-<sha1> in the working directory.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def run(test_one_input, instrument=("dumpsaver",)):  # type: ignore[no-untyped-def]
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
