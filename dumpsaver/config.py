"""Configuration as data: one table of settings, parsed into a frozen object.

The table is the single source of the keys, their defaults, their parsers and
their help text; etc/dumpsaver/dumpsaver.yaml shows every default, commented,
and a test checks that it stays in step with this table.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dumpsaver import early, paths
from dumpsaver.errors import ConfigError
from dumpsaver.sizes import parse_size

DEFAULT_PATH = Path(paths.CONFIG)
#: A config file above this is refused (by the fast path and the full path alike).
MAX_FILE = early.MAX_CONFIG
#: Parser errors quote at most this much of a bad value.
QUOTE = 60
_PHYS_LIMIT = 1 << 63  # physmem.MAX_PHYS, without importing it here


def _quote(v: Any) -> str:
    """A bounded repr: a value built from YAML aliases can be huge when walked."""
    if isinstance(v, str):
        text = repr(v[: QUOTE + 1])
    elif isinstance(v, (int, float, bool)) or v is None:
        text = repr(v)
    else:
        text = f"a {type(v).__name__}"
    return text if len(text) <= QUOTE else text[:QUOTE] + "..."


def _only_comments(data: bytes) -> bool:
    return all(not ln.strip() or ln.lstrip().startswith(b"#") for ln in data.splitlines())


def _size(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("not a size")
    if isinstance(v, int):
        if v < 0:
            raise ValueError("must not be negative")
        return v
    if isinstance(v, str):
        return parse_size(v, allow_zero=True)
    raise ValueError("not a size (use e.g. 512M)")


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("not an integer")
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return v

    return parse


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return str(v)

    return parse


def _path(v: Any) -> Path:
    if not isinstance(v, str) or not v.startswith("/") or "\0" in v:
        raise ValueError("must be an absolute path")
    return Path(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str) or any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError("must be a string without control characters")
    return v


def _opt_path(v: Any) -> Path | None:
    if v in ("", None):
        return None
    return _path(v)


def _texts(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise ValueError("must be a list of strings")
    return tuple(_text(x) for x in v)


def _part_size(v: Any) -> int:
    n = _size(v)
    if not 5 << 20 <= n <= 5 << 30:
        raise ValueError("must be between 5M and 5G (the S3 limits for a part)")
    return n


def _regions(v: Any) -> tuple[tuple[int, int], ...]:
    if not isinstance(v, list):
        raise ValueError("must be a list of START:SIZE strings")
    out = []
    for item in v:
        if not isinstance(item, str) or ":" not in item:
            raise ValueError(f"{_quote(item)} is not START:SIZE")
        start, size = item.split(":", 1)
        region = (parse_size(start, allow_zero=True), parse_size(size))
        if region[0] + region[1] > _PHYS_LIMIT:
            raise ValueError(f"{_quote(item)} lies beyond the physical address space")
        out.append(region)
    return tuple(out)


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    parse: Callable[[Any], Any]
    help: str


SETTINGS = (
    Setting("dump_dir", paths.DUMP_DIR, _path, "Where saved dumps go, one directory per dump."),
    Setting("format", "elf", _choice("elf", "kdump"),
            "Output format: elf (an ELF core like /proc/vmcore) or kdump (makedumpfile's "
            "kdump-compressed format, read by crash and drgn)."),
    Setting("minfree", "64M", _size,
            "Free space to leave on the dump file system; a dump that would cut into it is "
            "not saved (it stays in memory for a later try)."),
    Setting("keep_dumps", 5, _int(0, 100000),
            "Keep at most this many saved dumps, deleting the oldest (0: no limit)."),
    Setting("max_use", 0, _size,
            "Keep the saved dumps under this many bytes, deleting the oldest (0: no limit)."),
    Setting("restart", "reboot", _choice("reboot", "poweroff", "continue"),
            "What to do after a dump was saved: reboot cleanly (the machine may be unstable "
            "after a crash), power off, or continue the boot (back in service sooner: 30 s "
            "from the panic against 44-47 s in the QEMU guest of docs/performance.md)."),
    Setting("max_attempts", 3, _int(1, 1000),
            "After this many failed saves of the same dump, stop trying and say so."),
    Setting("sysfs", paths.SYSFS, _path,
            "The kernel's dump interface (docs/sysfs-abi.md)."),
    Setting("use_memmap", True, _bool,
            "Look for a dump in memmap=SIZE$ADDR reservations and memmap=SIZE!ADDR "
            "persistent memory on the kernel command line (the latter is given back to "
            "the system as movable RAM once it holds no unsaved dump)."),
    Setting("pmem_wait", 30, _int(0, 600),
            "With memmap=SIZE!ADDR: seconds the boot job waits for the persistent memory "
            "devices to appear after loading their modules."),
    Setting("regions", [], _regions,
            "More physical regions to look in, as \"START:SIZE\" strings, e.g. "
            "\"0x30000000:16M\". They must show as Reserved in /proc/iomem."),
    Setting("mem_device", paths.MEM, _path, "The physical memory device."),
    Setting("state_dir", paths.STATE_DIR, _path,
            "Where failed attempts are recorded (for status and the no-boot-loop rule)."),
    # dumpsaver upload (dumpsaver-upload.service): off until a target is set.
    Setting("upload_host", "", _text,
            "The machine's name in the store (<prefix>/<host>/<dump>/); empty: the host name."),
    Setting("s3_bucket", "", _text,
            "Upload saved dumps to this S3 bucket (empty: no S3 upload). The bucket must exist."),
    Setting("s3_endpoint", "", _text,
            "The S3-compatible store's URL, e.g. https://s3.example.org:9000 (empty: AWS)."),
    Setting("s3_prefix", "dumps", _text, "Key prefix: objects go to <prefix>/<host>/<dump>/."),
    Setting("s3_region", "", _text, "The store's region (empty: from the standard AWS chain)."),
    Setting("s3_verify_tls", True, _bool, "Verify the store's TLS certificate."),
    Setting("s3_checksum", "when_supported", _choice("when_supported", "when_required"),
            "When boto3 adds its own checksums to requests: when_supported (its default) or "
            "when_required, for stores that reject them. dumpsaver always sends its own "
            "SHA-256 per part and checks the store's full-object checksum."),
    Setting("s3_credentials_file", "", _opt_path,
            "A root-only file with the S3 keys, in the AWS credentials format ([default] "
            "aws_access_key_id = ..., aws_secret_access_key = ...). Empty: the standard AWS "
            "chain (environment, ~/.aws, instance role)."),
    Setting("s3_part_size", "8M", _part_size,
            "Multipart upload part size (5M to 5G); raised when a dump would need more than "
            "10000 parts."),
    Setting("s3_concurrency", 8, _int(1, 64),
            "Parts uploaded at once (memory: s3_concurrency x s3_part_size)."),
    Setting("ssh_destination", "", _text,
            "Copy saved dumps over ssh to [user@]host:/directory (empty: no ssh upload)."),
    Setting("ssh_port", 22, _int(1, 65535), "The ssh port."),
    Setting("ssh_identity", "", _opt_path, "The ssh private key (empty: ssh's default)."),
    Setting("ssh_options", [], _texts,
            "More ssh -o options, e.g. [\"UserKnownHostsFile=/etc/dumpsaver/known_hosts\"]."),
    Setting("ssh_mode", "copy", _choice("copy", "makedumpfile"),
            "copy: the vmcore as it is (resumable); makedumpfile: as a flattened stream into "
            "makedumpfile -R on the remote, as kdump-tools does (the remote needs makedumpfile)."),
    Setting("upload_delete", False, _bool,
            "Delete a dump here once every target has all of it, confirmed."),
    Setting("upload_full_limit", 1000, _int(0, 10**9),
            "Once the store holds this many full dumps with the same panic signature, upload "
            "only info.json and dmesg.txt of the next ones (0: always everything)."),
    Setting("upload_timeout", 60, _int(1, 3600),
            "Seconds to wait for the store to connect or answer before a retry."),
    Setting("upload_retries", 5, _int(1, 100),
            "Attempts per request, with exponential backoff and jitter; then the timer "
            "tries again later."),
)


@dataclass(frozen=True)
class Config:
    dump_dir: Path
    format: str
    minfree: int
    keep_dumps: int
    max_use: int
    restart: str
    max_attempts: int
    sysfs: Path
    use_memmap: bool
    pmem_wait: int
    regions: tuple[tuple[int, int], ...]
    mem_device: Path
    state_dir: Path
    upload_host: str
    s3_bucket: str
    s3_endpoint: str
    s3_prefix: str
    s3_region: str
    s3_verify_tls: bool
    s3_checksum: str
    s3_credentials_file: Path | None
    s3_part_size: int
    s3_concurrency: int
    ssh_destination: str
    ssh_port: int
    ssh_identity: Path | None
    ssh_options: tuple[str, ...]
    ssh_mode: str
    upload_delete: bool
    upload_full_limit: int
    upload_timeout: int
    upload_retries: int
    source: str = "built-in defaults"


assert [s.key for s in SETTINGS] == [f.name for f in fields(Config)][:-1]


def from_mapping(data: dict[Any, Any], source: str) -> Config:
    for k in data:
        if not isinstance(k, str):
            raise ConfigError(
                f"{source}: setting names are strings, not {_quote(k)}",
                hint="known keys: " + ", ".join(s.key for s in SETTINGS),
            )
    unknown = sorted(set(data) - {s.key for s in SETTINGS})
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {_quote(unknown[0])}",
            hint="known keys: " + ", ".join(s.key for s in SETTINGS),
        )
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = data.get(s.key, s.default)
        try:
            values[s.key] = s.parse(raw)
        except Exception as e:  # every parser error becomes one message naming the key
            msg = getattr(e, "message", None) or str(e)
            if len(msg) > 4 * QUOTE:
                msg = msg[: 4 * QUOTE] + "..."
            raise ConfigError(f"{source}: bad value for {s.key!r}: {msg}") from None
    return Config(**values, source=source)


def load(path: Path | None = None) -> Config:
    """Load ``path`` (default /etc/dumpsaver/dumpsaver.yaml, or $DUMPSAVER_CONFIG)."""
    explicit = path is not None or paths.CONFIG_ENV in os.environ
    p = path or Path(os.environ.get(paths.CONFIG_ENV, DEFAULT_PATH))
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {p} does not exist") from None
        return from_mapping({}, "built-in defaults")
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror}") from None
    if len(raw) > MAX_FILE:
        raise ConfigError(f"{p} is larger than {MAX_FILE} bytes")
    if _only_comments(raw):
        return from_mapping({}, str(p))  # only comments (as shipped): no YAML parser needed
    import yaml  # ~40 ms: only when the file sets something

    try:
        data = yaml.load(raw.decode("utf-8", "replace"), Loader=_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None)
        why = f": {problem}" if problem and "alias" in problem else ""
        raise ConfigError(f"{p}:{where} is not valid YAML{why}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings at the top level")
    return from_mapping(data, str(p))


def _loader() -> Any:
    """PyYAML's safe loader without anchors and aliases: a config file has no use for
    them, and they let a few lines expand into a structure of billions of nodes
    ("billion laughs")."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(
                    None, None, "uses an alias (aliases are not allowed here)",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)

    return Loader


def render_default_file() -> str:
    """The shipped config file: every setting, its help and its default, commented out."""
    import yaml

    out = [
        "# dumpsaver configuration: every setting with its default, commented out.",
        "# Uncomment and change what you need. See dumpsaver.yaml(5).",
    ]
    for s in SETTINGS:
        out.append("")
        out += textwrap.wrap(s.help, 78, initial_indent="# ", subsequent_indent="# ")
        out.append("#" + yaml.safe_dump({s.key: s.default}, default_flow_style=False).rstrip())
    return "\n".join(out) + "\n"
