"""The kernel module builds, warning-free, against the installed Debian headers; it
passes the kernel's checkpatch.pl; and its format header says what format.py says."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from dumpsaver import format as fmt
from dumpsaver.codecs import Codec

REPO = Path(__file__).resolve().parent.parent
KMOD = REPO / "kmod"
SOURCES = sorted(p for p in KMOD.rglob("*") if p.suffix in (".c", ".h"))

# The fields of struct ds_header, in order, as format.FIXED packs them.
HEADER_FIELDS = [
    "magic", "version", "header_size", "flags", "page_size", "codec", "excluded", "nr_cpus",
    "n_extents", "mem_pages", "crash_time_ns", "dump_id", "boot_id", "nr_entries", "nr_zero",
    "nr_dropped", "meta_offset", "meta_bytes", "data_offset", "data_bytes", "dir_offset",
    "reserved0", "meta_crc", "reserved1", "class_pages",
]
CONSTANTS = [f"DS_{n}" for n in (
    "VERSION", "FIXED_SIZE", "MAX_EXTENTS", "MAX_META_BYTES", "MAX_STRING", "UTS_LEN",
    "UTS_FIELDS", "NR_CLASSES", "DEFAULT_EXCLUDED", "HEADER_TRUNCATED", "ENTRY_ZERO",
    "ENTRY_RAW")] + [f"DS_CODEC_{c.name}" for c in Codec] + [
    f"DS_META_{m.name}" for m in fmt.Meta] + [f"DS_CLASS_{c.name}" for c in fmt.PageClass]
STRUCTS = {
    "ds_header": (fmt.FIXED, HEADER_FIELDS),
    "ds_extent": (fmt.EXTENT, ["paddr", "length"]),
    "ds_entry": (fmt.ENTRY, ["pfn", "offset", "length", "crc", "flags", "entry_crc"]),
    "ds_meta_rec": (fmt.META_REC, ["type", "reserved", "length"]),
}


def _py_layout(s: struct.Struct, names: list[str]) -> dict[str, tuple[int, int]]:
    """(offset, size) of each field of a struct.Struct, one field per format item
    (a count before 's' or before an integer code makes one field, an array)."""
    out, off = {}, 0
    items = re.findall(r"(\d*)([a-zA-Z])", s.format)
    assert len(items) == len(names), (s.format, names)
    for (count, code), name in zip(items, names, strict=True):
        size = struct.calcsize(f"<{count}{code}")
        out[name] = (off, size)
        off += size
    return out


def _c_program() -> str:
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "dumpsaver_format.h"',
             "#define F(s, f) printf(\"\\\"%s.%s\\\": [%zu, %zu],\\n\", #s, #f, "
             "offsetof(struct s, f), sizeof(((struct s *)0)->f))",
             "#define N(x) printf(\"\\\"%s\\\": %lld,\\n\", #x, (long long)(x))",
             "int main(void) {", 'printf("{\\n");']
    for sname, (_s, names) in STRUCTS.items():
        lines.append(f'printf("\\"{sname}\\": %zu,\\n", sizeof(struct {sname}));')
        lines += [f"F({sname}, {n});" for n in names]
    for const in CONSTANTS:
        lines.append(f"N({const});")
    lines += ['printf("\\"magic\\": \\"%s\\", \\"saved\\": \\"%s\\"}\\n", DS_MAGIC, '
              "DS_SAVED_MAGIC);", "return 0; }"]
    return "\n".join(lines) + "\n"


def test_header_matches_format_py(tmp_path: Path) -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (apt-get install gcc)")
    src = tmp_path / "layout.c"
    src.write_text(_c_program())
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-Wall", "-Werror", f"-I{KMOD}", "-o", str(exe), str(src)],
                   check=True)
    c = json.loads(subprocess.run([str(exe)], capture_output=True, text=True,
                                  check=True).stdout)
    for sname, (s, names) in STRUCTS.items():
        assert c[sname] == (fmt.FIXED_SIZE if sname == "ds_header" else s.size), sname
        for name, (off, size) in _py_layout(s, names).items():
            assert tuple(c[f"{sname}.{name}"]) == (off, size), f"{sname}.{name}"
    assert c["magic"].encode() == fmt.MAGIC and c["saved"].encode() == fmt.SAVED_MAGIC
    assert c["DS_VERSION"] == fmt.VERSION and c["DS_FIXED_SIZE"] == fmt.FIXED_SIZE
    assert c["DS_MAX_EXTENTS"] == fmt.MAX_EXTENTS
    assert c["DS_MAX_META_BYTES"] == fmt.MAX_META_BYTES
    assert c["DS_MAX_STRING"] == fmt.MAX_STRING
    assert (c["DS_UTS_LEN"], c["DS_UTS_FIELDS"]) == (fmt.UTS_LEN, len(fmt.UTS_FIELDS))
    assert c["DS_NR_CLASSES"] == len(fmt.PageClass)
    for pc in fmt.PageClass:
        assert c[f"DS_CLASS_{pc.name}"] == pc
    assert c["DS_DEFAULT_EXCLUDED"] == sum(1 << x for x in fmt.DEFAULT_EXCLUDED)
    for codec in Codec:
        assert c[f"DS_CODEC_{codec.name}"] == codec
    for meta in fmt.Meta:
        assert c[f"DS_META_{meta.name}"] == meta
    assert c["DS_HEADER_TRUNCATED"] == fmt.HeaderFlag.TRUNCATED
    assert (c["DS_ENTRY_ZERO"], c["DS_ENTRY_RAW"]) == (fmt.EntryFlag.ZERO, fmt.EntryFlag.RAW)


def kernel_headers() -> Path | None:
    """The newest installed Debian kernel headers (linux-headers-amd64 pulls them in)."""
    found = sorted(Path("/usr/src").glob("linux-headers-*-amd64"),
                   key=lambda p: [int(x) if x.isdigit() else 0
                                  for x in re.split(r"[.-]", p.name)])
    return next((p for p in reversed(found) if (p / "Makefile").exists()), None)


def test_module_builds_without_warnings(tmp_path: Path) -> None:
    kdir = kernel_headers()
    if kdir is None:
        pytest.skip("no kernel headers in /usr/src (apt-get install linux-headers-amd64)")
    build = tmp_path / "kmod"
    shutil.copytree(KMOD, build, ignore=shutil.ignore_patterns("user"))
    r = subprocess.run(["make", "-C", str(kdir), f"M={build}", "modules"],
                       capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert (build / "dumpsaver.ko").exists()
    warnings = [ln for ln in out.splitlines()
                if "warning" in ln.lower() and "Skipping BTF" not in ln]
    assert not warnings, out
    info = subprocess.run(["modinfo", "-F", "parm", str(build / "dumpsaver.ko")],
                          capture_output=True, text=True, check=True).stdout
    for parm in ("region_start", "region_size", "boot_id", "crash_notes", "codec", "reboot"):
        assert re.search(rf"^{parm}:\S", info, re.M), f"{parm} undocumented:\n{info}"
    for ko, depends in (("dumpsaver", ""), ("dumpsaver_lz4", "lz4_compress"),
                        ("dumpsaver_zstd", "zstd_compress")):
        def field(name: str, ko: str = ko) -> str:
            return subprocess.run(["modinfo", "-F", name, str(build / f"{ko}.ko")],
                                  capture_output=True, text=True, check=True).stdout.strip()
        assert field("license") == "GPL", ko
        # dumpsaver.ko takes a codec's ops with symbol_get: no hard dependency
        assert field("depends") == depends, ko


def checkpatch() -> Path | None:
    """scripts/checkpatch.pl from Debian's linux-source (tools/bootstrap.sh extracts it)."""
    for p in (os.environ.get("DUMPSAVER_CHECKPATCH"), REPO / ".venv/checkpatch/checkpatch.pl"):
        if p and Path(p).exists():
            return Path(p)
    return None


def test_checkpatch_clean() -> None:
    cp = checkpatch()
    if cp is None:
        pytest.skip("no checkpatch.pl (tools/bootstrap.sh extracts it into .venv/checkpatch)")
    r = subprocess.run(["perl", str(cp), "--no-tree", "--terse", "--show-types", "-f",
                        *map(str, SOURCES)], capture_output=True, text=True, timeout=300)
    problems = [ln for ln in r.stdout.splitlines() if not ln.startswith("total:")]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
