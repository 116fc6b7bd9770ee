"""The .deb runs on Debian's own boto3 (python3-boto3 1.26 with botocore 1.29, older
than the checksum settings of botocore 1.36): upload and list --remote with it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.upload.conftest import Dumps
from tests.upload.servers import Weed
from tests.upload.test_s3 import assert_complete

REPO = Path(__file__).resolve().parent.parent.parent
DIST = Path("/usr/lib/python3/dist-packages")
RUN = """import sys
sys.path[:0] = [sys.argv.pop(1), sys.argv.pop(1)]
import botocore
print("botocore", botocore.__version__, botocore.__file__, file=sys.stderr)
from dumpsaver.commands import main
sys.exit(main(sys.argv[1:]))
"""


def debian(*args: str) -> subprocess.CompletedProcess[str]:
    # -I: none of the venv's or /usr/local's packages, only the source tree and Debian's
    return subprocess.run(["/usr/bin/python3", "-I", "-c", RUN, str(REPO), str(DIST), *args],
                          capture_output=True, text=True, timeout=300, check=False)


def test_upload_with_debian_boto3(weed: Weed, dumps: Dumps) -> None:
    if not (DIST / "boto3").is_dir():
        pytest.skip("Debian's python3-boto3 is not installed (tools/bootstrap.sh installs it)")
    name = dumps.add(12 << 20)
    dumps.s3_config(weed)
    r = debian("--config", str(dumps.config), "upload")
    assert r.returncode == 0, r.stderr
    assert "/usr/lib/python3/dist-packages/botocore" in r.stderr
    assert_complete(weed, dumps, name)
    r = debian("--config", str(dumps.config), "list", "--remote", "--json")
    assert r.returncode == 0 and '"machines": 1' in r.stdout, r.stderr
