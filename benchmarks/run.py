"""dumpsaver's benchmarks, every figure measured side by side in one run.

    .venv/bin/python benchmarks/run.py [--quick] [--workdir DIR] [--json FILE] [--repeat N]

Writes a JSON file (default benchmarks/results.json, or results-quick.json with
--quick) and prints a table.  docs/performance.md explains each figure and
quotes a full run.  --quick (CI's smoke test) uses small machines and finishes
in well under a minute; its timings are not meant to be compared.

Every timed command runs as its own process (os.wait4 gives its CPU time and
peak RSS); every output file is fsynced, dumpsaver's because it always does,
the others' by us right after (makedumpfile does not fsync), so wall times
compare durable saves.  The memory image is in the page cache for every
contender (warm), as /dev/mem would be.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
DUMPSAVER = [PY, "-m", "dumpsaver"]
TIME = os.access("/usr/bin/time", os.X_OK)  # GNU time: the peak RSS of the command alone


@dataclass
class Run:
    wall: float
    cpu: float  # user + system
    maxrss_kb: int
    out_bytes: int = 0
    load: float = 0.0  # the 1-minute load average, the higher of before and after


def loadavg() -> float:
    """The 1-minute load average (/proc/loadavg): how busy the shared machine was."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


#: A run measured while the load average was at least this is retried (every core of
#: the machine had other work: the contenders' wall times then say little).
BUSY = float(os.cpu_count() or 1)


def timed(cmd: Sequence[str], *, out: Path | None = None, env: dict[str, str] | None = None,
          after: Callable[[], None] | None = None) -> Run:
    """Run ``cmd``; wall time includes ``after`` (e.g. an fsync of its output).

    The peak RSS comes from /usr/bin/time when there is one: a child's ru_maxrss on
    Linux also counts the image it was forked from (this benchmark process) before
    its exec, which would hide the command's own figure."""
    rss_file = Path(tempfile.mkstemp(prefix="rss-")[1])
    load0 = loadavg()
    wrap = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] if TIME else []
    t0 = time.perf_counter()
    p = subprocess.Popen([*wrap, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=env, cwd=REPO)
    assert p.stderr is not None
    err = p.stderr.read()
    _pid, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    maxrss = ru.ru_maxrss
    if TIME:
        text = rss_file.read_text().strip().splitlines()
        maxrss = int(text[-1]) if text and text[-1].isdigit() else maxrss
    rss_file.unlink()
    if after is not None:
        after()
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 4):  # 4: saved, incomplete (a truncated dump)
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {err.decode()[-2000:]}")
    size = 0
    if out is not None and out.exists():
        size = sum(f.stat().st_size for f in out.rglob("vmcore")) if out.is_dir() else (
            out.stat().st_size)
    return Run(wall, ru.ru_utime + ru.ru_stime, maxrss, size, max(load0, loadavg()))


def fsync_path(path: Path) -> Callable[[], None]:
    def go() -> None:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    return go


def best(runs: list[Run]) -> Run:
    """The median by wall time (and its CPU time and RSS)."""
    runs = sorted(runs, key=lambda r: r.wall)
    return runs[len(runs) // 2]


class Bench:
    def __init__(self, work: Path, repeat: int, retries: int = 0) -> None:
        self.work = work
        self.repeat = repeat
        self.retries = retries
        self.results: dict[str, Any] = {}

    # -- machines -----------------------------------------------------------------------

    def simulate(self, name: str, memory: str, profile: str, codec: str = "zlib",
                 seed: int = 1) -> Path:
        d = self.work / name
        if not (d / "manifest.json").exists():
            subprocess.run([*DUMPSAVER, "simulate", "--memory", memory, "--profile", profile,
                            "--seed", str(seed), "--codec", codec, "--into", str(d)],
                           check=True, stdout=subprocess.DEVNULL, cwd=REPO)
            (d / "before.mem").unlink()  # ground truth: not needed here, saves disk
        return d

    @staticmethod
    def manifest(sim: Path) -> dict[str, Any]:
        return json.loads((sim / "manifest.json").read_text())  # type: ignore[no-any-return]

    def save(self, sim: Path, fmt: str, *, keep: bool = True,
             extra_env: dict[str, str] | None = None) -> Run:
        """``dumpsaver save`` as the boot job runs it (a fresh process, --keep so it can rerun)."""
        dest = self.work / f"dest-{sim.name}-{fmt}"
        shutil.rmtree(dest, ignore_errors=True)
        cmd = [*DUMPSAVER, "save", "--mem", str(sim / "mem"), "--sysfs", str(sim / "sys"),
               "--dest", str(dest), "--state-dir", str(self.work / "state"), "--no-restart",
               "--cmdline", "/dev/null", "--format", fmt]
        if keep:
            cmd.append("--keep")
        env = {**os.environ, "DUMPSAVER_CONFIG": "/dev/null", **(extra_env or {})}
        env.pop("NOTIFY_SOCKET", None)
        r = timed(cmd, out=dest, env=env)
        return r

    def repeated(self, fn: Callable[[], Run], n: int | None = None) -> Run:
        """The median of n runs.  Runs measured while the machine was busy (load average
        >= BUSY) are retried up to ``retries`` times, after a pause; the n least loaded
        runs are kept.  Each Run carries its load average."""
        n = n or self.repeat
        runs = [fn() for _ in range(n)]
        for _ in range(self.retries):
            if sum(r.load >= BUSY for r in runs) <= n // 2:
                break
            time.sleep(10)
            runs.append(fn())
            runs = sorted(runs, key=lambda r: r.load)[:n]
        return best(runs)

    # -- the figures ----------------------------------------------------------------------

    def vs_baselines(self, sim: Path) -> None:
        """Issue 2: save vs a plain read-and-write of the dump's bytes; issue 5: kdump save vs
        makedumpfile -c -d 0 on an ELF core of the same machine, ELF save vs a plain
        read+decompress+write of the same pages."""
        m = self.manifest(sim)
        mem_mb = m["memory"] / 1e6
        saved_mb = m["saved_pages"] * m["page_size"] / 1e6
        out = self.work / "plain.out"
        copy = self.repeated(lambda: timed([PY, str(HERE / "plain.py"), "copy", str(sim),
                                            str(out)], out=out))
        plain = self.repeated(lambda: timed([PY, str(HERE / "plain.py"), "decompress", str(sim),
                                             str(out)], out=out))
        out.unlink(missing_ok=True)
        kdump = self.repeated(lambda: self.save(sim, "kdump"))
        elf_one = self.repeated(lambda: self.save(sim, "elf",
                                                  extra_env={"DUMPSAVER_ELF_PROCESSES": "1"}))
        elf = self.repeated(lambda: self.save(sim, "elf",
                                              extra_env={"DUMPSAVER_ELF_PROCESSES": "2"}))
        core = next((self.work / f"dest-{sim.name}-elf").rglob("vmcore"))
        hidden = self.work / "core-novmcoreinfo"
        subprocess.run([PY, str(HERE / "plain.py"), "hide-vmcoreinfo", str(core), str(hidden)],
                       check=True)
        mdf_out = self.work / "mdf.out"
        mdf = mdf_l = None
        if shutil.which("makedumpfile"):
            def run_mdf() -> Run:
                mdf_out.unlink(missing_ok=True)
                return timed(["makedumpfile", "-c", "-d", "0", str(hidden), str(mdf_out)],
                             out=mdf_out, after=fsync_path(mdf_out))

            mdf = self.repeated(run_mdf)

            def run_mdf_l() -> Run:
                mdf_out.unlink(missing_ok=True)
                return timed(["makedumpfile", "-l", "-d", "0", str(hidden), str(mdf_out)],
                             out=mdf_out, after=fsync_path(mdf_out))

            mdf_l = self.repeated(run_mdf_l)
        mdf_out.unlink(missing_ok=True)
        hidden.unlink()
        r: dict[str, Any] = {
            "machine": {k: m[k] for k in ("memory", "profile", "seed", "codec", "saved_pages",
                                          "compressed_bytes")},
            "plain_copy": asdict(copy), "plain_decompress": asdict(plain),
            "save_kdump": asdict(kdump), "save_elf": asdict(elf),
            "save_elf_one_process": asdict(elf_one),
            "elf_two_vs_one_process": elf_one.wall / elf.wall,
            "elf_two_vs_one_process_cpu": elf_one.cpu / elf.cpu,
            "makedumpfile": asdict(mdf) if mdf else None,
            "makedumpfile_lzo": asdict(mdf_l) if mdf_l else None,
            "save_kdump_memory_MBps": mem_mb / kdump.wall,
            "save_kdump_saved_MBps": saved_mb / kdump.wall,
            "save_elf_memory_MBps": mem_mb / elf.wall,
            "save_elf_saved_MBps": saved_mb / elf.wall,
            "kdump_vs_plain_copy": copy.wall / kdump.wall,
            "elf_vs_plain_copy": copy.wall / elf.wall,
            "elf_vs_plain_decompress": plain.wall / elf.wall,
            "elf_vs_plain_decompress_cpu": plain.cpu / elf.cpu,
            "kdump_vs_plain_copy_cpu": copy.cpu / kdump.cpu,
            "load": {k: v.load for k, v in (("plain_copy", copy), ("plain_decompress", plain),
                                            ("save_kdump", kdump), ("save_elf", elf),
                                            ("save_elf_one_process", elf_one))},
        }
        if mdf:
            r["kdump_speedup_vs_makedumpfile"] = mdf.wall / kdump.wall
            r["kdump_speedup_vs_makedumpfile_cpu"] = mdf.cpu / kdump.cpu
            r["makedumpfile_bytes"] = mdf.out_bytes
            r["load"]["makedumpfile"] = mdf.load
        if mdf_l:
            r["kdump_speedup_vs_makedumpfile_lzo"] = mdf_l.wall / kdump.wall
            r["kdump_speedup_vs_makedumpfile_lzo_cpu"] = mdf_l.cpu / kdump.cpu
            r["makedumpfile_lzo_bytes"] = mdf_l.out_bytes
            r["load"]["makedumpfile_lzo"] = mdf_l.load
        self.results["baselines"] = r

    def rss(self, sizes: Sequence[str]) -> None:
        out = {}
        for size in sizes:
            sim = self.simulate(f"sparse-{size}", size, "sparse")
            m = self.manifest(sim)
            for fmt in ("elf", "kdump"):
                run = self.save(sim, fmt)
                out[f"{size}-{fmt}"] = {"memory": m["memory"], "saved_pages": m["saved_pages"],
                                        "maxrss_kb": run.maxrss_kb, "wall": run.wall,
                                        "out_bytes": run.out_bytes}
            shutil.rmtree(sim)
        self.results["peak_rss"] = out

    def slope(self, sizes: Sequence[str], profile: str) -> None:
        """Save time against dump size: a least-squares line through (pages, seconds)."""
        pts: dict[str, list[tuple[float, float]]] = {"kdump": [], "elf": []}
        rows = []
        for size in sizes:
            sim = self.simulate(f"{profile}-{size}", size, profile, seed=2)
            m = self.manifest(sim)
            for fmt in pts:
                run = self.repeated(lambda sim=sim, fmt=fmt: self.save(sim, fmt))  # type: ignore[misc]
                pts[fmt].append((m["saved_pages"], run.wall))
                rows.append({"memory": m["memory"], "format": fmt, "saved_pages":
                             m["saved_pages"], "wall": run.wall, "cpu": run.cpu})
            shutil.rmtree(sim)
        fit = {}
        for fmt in pts:
            for what in ("wall", "cpu"):
                xs = [float(r["saved_pages"]) for r in rows if r["format"] == fmt]
                ys = [float(r[what]) for r in rows if r["format"] == fmt]
                if len(xs) < 2:
                    continue
                s, c = statistics.linear_regression(xs, ys)
                r2 = statistics.correlation(xs, ys) ** 2 if len(xs) > 2 else 1.0
                fit[f"{fmt}-{what}"] = {"seconds_per_1000_pages": s * 1000, "intercept_s": c,
                                        "r2": r2, "MB_per_s": 4096 / 1e6 / s if s > 0 else None}
        self.results["slope"] = {"profile": profile, "points": rows, "fit": fit}

    def sizes_per_codec(self, memory: str) -> None:
        from dumpsaver import codecs

        out = {}
        for codec in ("zlib", "zstd", "lz4"):
            if not codecs.available(codecs.Codec[codec.upper()]):
                continue
            sim = self.simulate(f"idle-{memory}-{codec}", memory, "idle", codec=codec)
            m = self.manifest(sim)
            files = {}
            for fmt in ("kdump", "elf"):
                run = self.save(sim, fmt)
                files[fmt] = run.out_bytes
            out[codec] = {"memory": m["memory"], "saved_pages": m["saved_pages"],
                          "compressed_bytes": m["compressed_bytes"],
                          "kdump_file_bytes": files["kdump"], "elf_file_bytes": files["elf"]}
            shutil.rmtree(sim)
        self.results["size_per_codec"] = out

    def startup(self, n: int) -> None:
        """``dumpsaver save`` of a released dump through the full path (the options name
        the area, so the early peek is not taken) vs the bare interpreter: what a boot
        with a configured area and an already-saved dump in it costs.  The boot with
        nothing waiting takes the peek: benchmarks/boot.py measures that (goal 3)."""
        sim = self.simulate("released", "64M", "idle")
        self.save(sim, "kdump", keep=False)  # release it: the header now says saved
        env = {**os.environ, "DUMPSAVER_CONFIG": "/dev/null"}
        env.pop("NOTIFY_SOCKET", None)
        cmd = [*DUMPSAVER, "save", "--mem", str(sim / "mem"), "--sysfs", str(sim / "sys"),
               "--dest", str(self.work / "dest-none"), "--state-dir", str(self.work / "state"),
               "--no-restart", "--cmdline", "/dev/null"]
        runs = {
            "dumpsaver_save_no_dump": [timed(cmd, env=env) for _ in range(n)],
            "python_c_pass": [timed([PY, "-c", "pass"]) for _ in range(n)],
            "python_S_c_pass": [timed([PY, "-S", "-c", "pass"]) for _ in range(n)],
        }
        shutil.rmtree(sim)
        med = {k: statistics.median(r.wall for r in v) for k, v in runs.items()}
        self.results["no_dump"] = {
            **{k: {"wall": v, "maxrss_kb": best(runs[k]).maxrss_kb} for k, v in med.items()},
            "vs_python": med["dumpsaver_save_no_dump"] / med["python_c_pass"],
            "vs_python_S": med["dumpsaver_save_no_dump"] / med["python_S_c_pass"],
        }

    def codec_throughput(self, memory: int) -> None:
        """The panic-side encoder (encode_dump into a file) and the saver's per-page
        decompression, per codec, on the kernel pages of a busy machine (in this process)."""
        import random
        import uuid

        from dumpsaver import codecs
        from dumpsaver import format as fmt
        from dumpsaver.codecs import Codec
        from dumpsaver.encode import encode_dump
        from dumpsaver.physmem import LogicalStream, PhysMem, Range
        from dumpsaver.simulate import PROFILES, Machine, panic_meta

        m = Machine(memory, PROFILES["busy"], 5)
        keep = [p for p in range(m.pages) if m.classes[p] not in fmt.DEFAULT_EXCLUDED]
        pages = [(p, m.page(p)) for p in keep]
        mb = len(pages) * m.page_size / 1e6
        target = self.work / "encode.target"
        size = len(pages) * (m.page_size + 64) + (1 << 20)
        out = {}
        for codec in Codec:
            if not codecs.available(codec):
                continue
            with open(target, "wb") as f:
                f.truncate(size)
            with PhysMem(str(target), [Range(0, size)], writable=True) as mem:
                t0 = time.perf_counter()
                h = encode_dump(
                    LogicalStream(mem, [(0, size)]), pages, page_size=m.page_size,
                    mem_pages=m.pages, codec=codec,
                    meta=panic_meta(m, 0, random.Random(1), "bench", 2),
                    excluded=fmt.DEFAULT_EXCLUDED, class_pages=(0,) * 8, crash_time_ns=0,
                    boot_id=uuid.uuid4(),
                )
                enc = time.perf_counter() - t0
            comp = codecs.compressor(codec)
            blobs = [comp(p) for _pfn, p in pages]
            dec = codecs.decompressor(codec, m.page_size)
            t0 = time.perf_counter()
            for b in blobs:
                if len(b) < m.page_size:
                    dec(b)
            dect = time.perf_counter() - t0
            out[codec.label] = {"pages": len(pages), "encode_MBps": mb / enc,
                                "stored_bytes": h.data_bytes, "ratio": mb * 1e6 / h.data_bytes,
                                "decompress_MBps": mb / dect}
        target.unlink()
        self.results["codecs"] = out

    def panic_side(self, sim: Path) -> None:
        """Issue 13 goal 5: the kernel module's encoding core (kmod/encode.c built for user
        space, kmod/user/dsenc) in MB of kernel pages per second per codec, against
        makedumpfile -c (zlib) and -l (lzo) compressing the same pages (those of ``sim``:
        its ELF core, VMCOREINFO hidden, at -d 0).  dsenc times its encode calls alone;
        makedumpfile is timed as a process (CPU time: its reading and writing included)."""
        sys.path.insert(0, str(REPO))
        from dumpsaver.codecs import Codec
        from tests.kmod_encoder import Job, build_dsenc, run_c

        m = self.manifest(sim)
        out: dict[str, Any] = {"memory": m["memory"], "profile": m["profile"],
                               "seed": m["seed"], "load_before": loadavg()}
        exe = build_dsenc(self.work)
        if exe is not None:
            for codec in ("zlib", "lz4", "zstd"):
                job = Job.make(m["memory"], m["profile"], m["seed"], area_size=m["memory"] // 2,
                               codec=Codec[codec.upper()])
                kept = len(job.order())
                mb = kept * job.machine.page_size / 1e6
                secs, cpus = [], []
                for _ in range(self.repeat):
                    c = run_c(exe, job, self.work / "dsenc.mem")
                    secs.append(float(c["seconds"]))
                    cpus.append(float(c.get("cpu_seconds", c["seconds"])))
                (self.work / "dsenc.mem").unlink(missing_ok=True)
                sec, cpu = statistics.median(secs), statistics.median(cpus)
                # MBps: per CPU second of the encode calls, as makedumpfile's below (per CPU
                # second of the process): on a shared machine wall time counts the neighbours.
                out[f"kmod_{codec}"] = {"pages": kept, "seconds": sec, "cpu_seconds": cpu,
                                        "MBps": mb / cpu, "MBps_wall": mb / sec,
                                        "stored_bytes": int(c["stored_bytes"]), "load": loadavg()}
        if shutil.which("makedumpfile"):
            self.save(sim, "elf")
            core = next((self.work / f"dest-{sim.name}-elf").rglob("vmcore"))
            hidden = self.work / "core-novmcoreinfo"
            subprocess.run([PY, str(HERE / "plain.py"), "hide-vmcoreinfo", str(core), str(hidden)],
                           check=True)
            mb = m["saved_pages"] * m["page_size"] / 1e6
            mdf_out = self.work / "mdf.out"
            for flag, name in (("-c", "makedumpfile_zlib"), ("-l", "makedumpfile_lzo")):
                def go(flag: str = flag) -> Run:
                    mdf_out.unlink(missing_ok=True)
                    return timed(["makedumpfile", flag, "-d", "0", str(hidden), str(mdf_out)],
                                 out=mdf_out)
                r = self.repeated(go)
                out[name] = {"pages": m["saved_pages"], "cpu": r.cpu, "wall": r.wall,
                             "MBps_cpu": mb / r.cpu, "out_bytes": r.out_bytes, "load": r.load}
            mdf_out.unlink(missing_ok=True)
            hidden.unlink()
        for codec, mdf in (("zlib", "makedumpfile_zlib"), ("lz4", "makedumpfile_lzo"),
                           ("zstd", "makedumpfile_lzo")):
            if f"kmod_{codec}" in out and mdf in out:
                out[f"kmod_{codec}_vs_{mdf}"] = out[f"kmod_{codec}"]["MBps"] / out[mdf]["MBps_cpu"]
        self.results["panic_side"] = out

    def parallel_decompress(self, sim: Path) -> None:
        """Would a second core help the ELF path?  Dump.pages() vs the same pages decompressed
        by a pool of 2 threads over chunks of 64 pages, at most 4 chunks in flight (zlib and
        zstd release the GIL while they work)."""
        from concurrent.futures import ThreadPoolExecutor

        from dumpsaver import locate, save
        from dumpsaver.codecs import CodecError, decompressor

        cand = locate.from_sysfs(sim / "sys")
        assert cand is not None
        out: dict[str, float] = {}
        for workers in (0, 2):
            mem, dump = save.open_dump(cand, str(sim / "mem"))
            with mem:
                scan = dump.scan()
                t0 = time.perf_counter()
                if workers == 0:
                    n = sum(1 for _ in dump.pages(scan))
                else:
                    dec = decompressor(dump.header.codec, dump.header.page_size)

                    def work(chunk: list[tuple[Any, bytes | None]],
                             dec: Callable[[bytes], bytes] = dec) -> list[bytes | None]:
                        res: list[bytes | None] = []
                        for e, data in chunk:
                            if data is None or e.zero or e.raw:
                                res.append(data)
                                continue
                            try:
                                res.append(dec(data))
                            except CodecError:
                                res.append(None)
                        return res

                    n = 0
                    with ThreadPoolExecutor(workers) as pool:
                        futs = []
                        chunk: list[tuple[Any, bytes | None]] = []
                        for item in dump.stored_pages(scan):
                            chunk.append(item)
                            if len(chunk) == 64:
                                futs.append(pool.submit(work, chunk))
                                chunk = []
                            while len(futs) > 2 * workers:
                                n += len(futs.pop(0).result())
                        futs.append(pool.submit(work, chunk))
                        n += sum(len(f.result()) for f in futs)
                out[f"workers_{workers}_s"] = time.perf_counter() - t0
                out["pages"] = n
        out["speedup"] = out["workers_0_s"] / out["workers_2_s"]
        self.results["parallel_decompress"] = out


def table(res: dict[str, Any]) -> str:
    lines = []

    def row(name: str, value: str, goal: str = "") -> None:
        lines.append(f"{name:<58} {value:>16}  {goal}")

    b = res.get("baselines")
    if b:
        mc = b["machine"]
        lines.append(f"machine: {mc['memory'] >> 20} MiB {mc['profile']} ({mc['codec']}), "
                     f"{mc['saved_pages']} pages saved, {mc['compressed_bytes'] / 1e6:.1f} MB")
        for k in ("plain_copy", "plain_decompress", "save_kdump", "save_elf",
                  "save_elf_one_process", "makedumpfile", "makedumpfile_lzo"):
            if b.get(k):
                row(f"  {k}: wall / cpu s (load)", f"{b[k]['wall']:.2f} / {b[k]['cpu']:.2f}",
                    f"load {b[k].get('load', 0):.1f}")
        row("save kdump: MB of memory/s (saved-page MB/s)",
            f"{b['save_kdump_memory_MBps']:.0f} ({b['save_kdump_saved_MBps']:.0f})")
        row("save elf: MB of memory/s (saved-page MB/s)",
            f"{b['save_elf_memory_MBps']:.0f} ({b['save_elf_saved_MBps']:.0f})")
        row("kdump save vs plain read+write of the dump bytes (wall / cpu)",
            f"{b['kdump_vs_plain_copy']:.2f} / {b.get('kdump_vs_plain_copy_cpu', 0):.2f}",
            "goal >= 0.5")
        if "kdump_speedup_vs_makedumpfile" in b:
            row("kdump save speed-up vs makedumpfile -c -d 0 (wall)",
                f"{b['kdump_speedup_vs_makedumpfile']:.2f}x", "goal >= 10x")
            row("kdump save speed-up vs makedumpfile -c -d 0 (cpu)",
                f"{b['kdump_speedup_vs_makedumpfile_cpu']:.2f}x")
        if "kdump_speedup_vs_makedumpfile_lzo" in b:
            row("kdump save speed-up vs makedumpfile -l -d 0 (wall / cpu)",
                f"{b['kdump_speedup_vs_makedumpfile_lzo']:.2f}x / "
                f"{b['kdump_speedup_vs_makedumpfile_lzo_cpu']:.2f}x", "goal > 1x")
        row("elf save vs plain read+decompress+write (wall)",
            f"{b['elf_vs_plain_decompress']:.2f}", "goal >= 1.5")
        row("elf save vs plain read+decompress+write (cpu)",
            f"{b['elf_vs_plain_decompress_cpu']:.2f}")
        if "elf_two_vs_one_process" in b:
            row("elf save, two processes vs one (wall / cpu)",
                f"{b['elf_two_vs_one_process']:.2f}x / {b['elf_two_vs_one_process_cpu']:.2f}x")
    for k, v in res.get("peak_rss", {}).items():
        row(f"peak RSS, {k} sparse ({v['saved_pages']} pages)", f"{v['maxrss_kb'] / 1024:.1f} MiB")
    s = res.get("slope")
    if s:
        for fmt, f in s["fit"].items():
            row(f"save time vs dump size ({s['profile']}, {fmt}): s per 1000 pages",
                f"{f['seconds_per_1000_pages']:.3f}", f"r2 {f['r2']:.3f}, "
                f"+{f['intercept_s']:.2f} s")
    for codec, v in res.get("size_per_codec", {}).items():
        row(f"{v['memory'] >> 20} MiB idle, {codec}: in memory / kdump / elf MB",
            f"{v['compressed_bytes'] / 1e6:.1f} / {v['kdump_file_bytes'] / 1e6:.1f} / "
            f"{v['elf_file_bytes'] / 1e6:.1f}")
    n = res.get("no_dump")
    if n:
        # The full path (options given, a released area read): the boot's own path, the
        # peek with nothing waiting, is measured by benchmarks/boot.py (goal 3).
        row("released dump, full path: save / python -c pass / -S (s)",
            f"{n['dumpsaver_save_no_dump']['wall']:.3f} / {n['python_c_pass']['wall']:.3f} / "
            f"{n['python_S_c_pass']['wall']:.3f}")
        row("released dump, full path: vs python -c pass, vs -S",
            f"{n['vs_python']:.1f}x / {n['vs_python_S']:.1f}x")
    for codec, v in res.get("codecs", {}).items():
        row(f"codec {codec}: encode MB/s, decompress MB/s, ratio",
            f"{v['encode_MBps']:.0f}, {v['decompress_MBps']:.0f}, {v['ratio']:.2f}")
    ps = res.get("panic_side")
    if ps:
        for k, v in ps.items():
            if k.startswith("kmod_") and isinstance(v, dict):
                row(f"panic side: kmod encode core, {k[5:]}: MB of pages/s", f"{v['MBps']:.0f}",
                    f"load {v['load']:.1f}")
            elif k.startswith("makedumpfile") and isinstance(v, dict):
                row(f"panic side: {k} (process CPU): MB of pages/s", f"{v['MBps_cpu']:.0f}",
                    f"load {v['load']:.1f}")
            elif "_vs_" in k:
                row(f"  {k}", f"{v:.2f}x")
    p = res.get("parallel_decompress")
    if p:
        row("ELF pages(): 2 decompression threads vs 1 (speed-up)", f"{p['speedup']:.2f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small machines: CI's smoke test")
    ap.add_argument("--workdir", type=Path, help="scratch directory on the disk to measure, "
                    "kept with its main machine for the next run (default: a new one under "
                    "/var/tmp, removed afterwards)")
    ap.add_argument("--json", type=Path, help="where to write the results")
    ap.add_argument("--repeat", type=int, help="runs per timing, the median is kept")
    ap.add_argument("--only", help="comma-separated parts: baselines,rss,slope,sizes,startup,"
                    "codecs,panic,parallel")
    ap.add_argument("--retries", type=int, help="extra runs of a timing measured while the "
                    "load average was >= the number of CPUs (default 2, --quick 0)")
    a = ap.parse_args(argv)
    quick = a.quick
    repeat = a.repeat or (1 if quick else 3)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="dumpsaver-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    only = set(a.only.split(",")) if a.only else None
    retries = a.retries if a.retries is not None else (0 if quick else 2)
    b = Bench(work, repeat, retries)
    # As the packages install it (Debian's py3compile, RPM's byte-compilation): from
    # compiled modules.  Without them, with PYTHONDONTWRITEBYTECODE set as on the
    # development VM, every save compiled 38 modules again, 60-80 ms of its CPU.
    subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "dumpsaver")], check=True,
                   stdout=subprocess.DEVNULL)
    t0 = time.perf_counter()
    load_start = loadavg()
    try:
        def part(name: str) -> bool:
            return only is None or name in only

        if part("baselines"):
            b.vs_baselines(b.simulate("main", "128M" if quick else "1G", "busy", seed=3))
        if part("parallel"):
            b.parallel_decompress(b.simulate("main", "128M" if quick else "1G", "busy", seed=3))
        if part("startup"):
            b.startup(5 if quick else 15)
        if part("rss"):
            b.rss(["256M", "1G"] if quick else ["1G", "8G", "32G"])
        if part("slope"):
            b.slope(["32M", "64M", "128M"] if quick else ["256M", "512M", "1G", "2G", "4G"],
                    "idle")
        if part("sizes"):
            b.sizes_per_codec("64M" if quick else "510M")
        if part("codecs"):
            b.codec_throughput((16 if quick else 128) << 20)
        if part("panic"):
            b.panic_side(b.simulate("main", "128M" if quick else "1G", "busy", seed=3))
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:  # keep the main machine for the next run, drop the outputs
            for d in work.glob("dest-*"):
                shutil.rmtree(d, ignore_errors=True)
    b.results["meta"] = {
        "quick": quick, "repeat": repeat, "seconds": time.perf_counter() - t0,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "machine": platform.machine(), "kernel": platform.release(),
        "load_start": load_start, "load_end": loadavg(), "busy_load": BUSY,
        "retries": retries,
    }
    dest = a.json or HERE / ("results-quick.json" if quick else "results.json")
    dest.write_text(json.dumps(b.results, indent=1) + "\n")
    print(table(b.results))
    print(f"({b.results['meta']['seconds']:.0f} s; results in {dest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
