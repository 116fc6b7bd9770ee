from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dumpsaver import config
from dumpsaver.errors import EXIT_USAGE, ConfigError


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DUMPSAVER_CONFIG", raising=False)
    c = config.load(None) if not config.DEFAULT_PATH.exists() else config.from_mapping({}, "x")
    assert c.dump_dir == Path("/var/dumps")
    assert c.minfree == 64 << 20 and c.restart == "reboot" and c.keep_dumps == 5


def test_shipped_file_uncommented_gives_the_defaults(tmp_path: Path) -> None:
    text = (Path(__file__).parent.parent / "etc/dumpsaver/dumpsaver.yaml").read_text()
    lines = [ln[1:] for ln in text.splitlines() if ln.startswith("#") and not ln.startswith("# ")]
    p = tmp_path / "c.yaml"
    p.write_text("\n".join(lines))
    assert {k for k in yaml.safe_load(p.read_text())} == {s.key for s in config.SETTINGS}
    assert config.load(p) == config.from_mapping({}, str(p))


def test_config_is_frozen() -> None:
    c = config.from_mapping({}, "x")
    with pytest.raises(AttributeError):
        c.minfree = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("minfre: 1M", "minfre"),
        ("minfree: lots", "minfree"),
        ("keep_dumps: -1", "keep_dumps"),
        ("keep_dumps: true", "keep_dumps"),
        ("restart: sometimes", "restart"),
        ("dump_dir: relative/path", "dump_dir"),
        ("regions: [0x30000000]", "regions"),
        ("use_memmap: 'yes'", "use_memmap"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert repr(key) in e.value.message
    assert e.value.exit_code == EXIT_USAGE


def test_values_parse(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("minfree: 1G\nregions: ['0x30000000:16M']\nmax_use: 10G\nrestart: continue\n")
    c = config.load(p)
    assert c.minfree == 1 << 30 and c.max_use == 10 << 30
    assert c.regions == ((0x30000000, 16 << 20),)
    assert c.restart == "continue"


def test_not_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(p)
