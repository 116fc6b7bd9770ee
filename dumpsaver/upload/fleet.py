"""The fleet view, ``dumpsaver list --remote``: every dump in the store, grouped by
kernel release and panic signature, with how many machines and when first and last.

It reads ``<prefix>/<host>/<dump>/info.json``, the marker of a complete upload, so
an upload still in progress is never counted.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dumpsaver.sanitize import clean_text
from dumpsaver.upload.s3 import INDEX, S3Target


@dataclass
class Group:
    release: str
    signature: str
    panic: str
    hosts: set[str] = field(default_factory=set)
    dumps: int = 0
    full: int = 0
    first: str = ""
    last: str = ""

    def add(self, host: str, when: str, mode: str) -> None:
        self.hosts.add(host)
        self.dumps += 1
        self.full += mode == "full"
        if when and (not self.first or when < self.first):
            self.first = when
        if when and when > self.last:
            self.last = when

    def as_dict(self) -> dict[str, Any]:
        return {"kernel_release": self.release, "signature": self.signature,
                "panic": self.panic, "machines": len(self.hosts), "dumps": self.dumps,
                "full_dumps": self.full, "first_seen": self.first, "last_seen": self.last}


def info_keys(t: S3Target) -> list[str]:
    prefix = f"{t.prefix}/" if t.prefix else ""
    depth = prefix.count("/") + 3
    keys = []
    token: str | None = None
    while True:
        kw: dict[str, Any] = {"Bucket": t.bucket, "Prefix": prefix}
        if token:
            kw["ContinuationToken"] = token
        r = t._call("listing the store", "list_objects_v2", **kw)
        for o in r.get("Contents", []):
            k = str(o["Key"])
            if k.endswith("/info.json") and k.count("/") == depth - 1 and \
                    not k[len(prefix):].startswith(INDEX + "/"):
                keys.append(k)
        if not r.get("IsTruncated"):
            return keys
        token = str(r["NextContinuationToken"])


def fetch(t: S3Target, key: str) -> dict[str, Any] | None:
    r = t._call(key, "get_object", Bucket=t.bucket, Key=key)
    try:
        data = json.loads(r["Body"].read(1 << 20))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def groups(t: S3Target) -> list[Group]:
    keys = info_keys(t)
    with ThreadPoolExecutor(max_workers=16) as pool:
        infos = list(pool.map(lambda k: (k, fetch(t, k)), keys))
    out: dict[tuple[str, str], Group] = {}
    for key, info in infos:
        if info is None:
            continue
        up = info.get("upload") if isinstance(info.get("upload"), dict) else {}
        assert isinstance(up, dict)
        host = clean_text(str(up.get("host") or key.split("/")[-3]), 63)
        rel = clean_text(str(up.get("kernel_release", "unknown")), 65)
        sig = clean_text(str(up.get("signature", "unknown")), 16)
        g = out.setdefault((rel, sig), Group(rel, sig, clean_text(str(info.get("panic", "")),
                                                                   120)))
        g.add(host, str(info.get("crash_time", "")), str(up.get("mode", "full")))
    return sorted(out.values(), key=lambda g: (-len(g.hosts), -g.dumps, g.last))


def remote_groups(t: S3Target) -> list[dict[str, Any]]:
    return [g.as_dict() for g in groups(t)]


def table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["no dumps in the store"]
    out = [f"{'MACHINES':>8} {'DUMPS':>6}  {'FIRST SEEN':<20} {'LAST SEEN':<20} "
           f"{'KERNEL':<24} {'SIGNATURE':<16}  PANIC"]
    for r in rows:
        out.append(f"{r['machines']:>8} {r['dumps']:>6}  {r['first_seen'][:19]:<20} "
                   f"{r['last_seen'][:19]:<20} {r['kernel_release'][:24]:<24} "
                   f"{r['signature']:<16}  {r['panic']}")
    return out
