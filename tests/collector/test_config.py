"""Configuration: defaults, the example file, and errors that name key, value and expectation."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from collector.config import Config, ConfigError, defaults_as_dict, from_dict, load

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "collector.toml.example"
REFERENCE = ROOT / "docs" / "CONFIG.md"


def _keys(doc: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in doc.items():
        path = f"{prefix}{name}"
        keys |= _keys(value, path + ".") if isinstance(value, dict) else {path}
    return keys


def with_state_in(directory: Path) -> Config:
    """The defaults, with the relative state_dir resolved as loading resolves it."""
    storage = msgspec.structs.replace(Config().storage, state_dir=str(directory / "state"))
    return msgspec.structs.replace(Config(), storage=storage)


def test_no_file_means_loopback_defaults() -> None:
    config = load(None)
    assert config == with_state_in(Path.cwd())
    assert config.server.host == "127.0.0.1"


def test_example_documents_every_key_with_its_default() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    assert _keys(example) == _keys(defaults_as_dict())
    assert load(EXAMPLE) == with_state_in(ROOT)


def test_reference_documents_every_key_with_its_default() -> None:
    # Each section's table has one row per key: | `key` | `default` | meaning |
    text = REFERENCE.read_text()
    for section, values in defaults_as_dict().items():
        table = text.split(f"## `[{section}]`", 1)[1].split("\n## ", 1)[0]
        for key, default in values.items():
            if isinstance(default, bool):
                shown = str(default).lower()
            elif isinstance(default, str):
                shown = f'"{default}"'
            else:
                shown = str(default)
            assert f"| `{key}` | `{shown}` |" in table, f"{section}.{key} = {shown}"


def test_example_has_a_comment_for_every_key() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            above = lines[i - 1]
            assert above.startswith("#") or "=" in above, f"undocumented key: {line}"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"server": {"udp_port": "x"}}, "server.udp_port = 'x': expected int, got str"),
        ({"server": {"udp_port": 70000}}, "server.udp_port = 70000: expected int <= 65535"),
        ({"server": {"prot": 1}}, "unknown key 'server.prot'; expected one of: host,"),
        (
            {"sever": {}},
            "unknown key 'sever'; expected one of: "
            "aggregate, alerts, auth, fanout, ingest, limits, log, server",
        ),
        ({"log": {"level": "loud"}}, "log.level = 'loud': expected one of: 'debug'"),
        ({"ingest": {"ack_interval_s": 0}}, "ingest.ack_interval_s = 0: expected float > 0.0"),
        ({"ingest": {"max_datagram_bytes": 70000}}, "ingest.max_datagram_bytes = 70000"),
        ({"server": [1]}, "server = [1]: expected object, got array"),
        ({"server": {"max_connections": True}}, "server.max_connections = True: expected int"),
    ],
)
def test_errors_name_key_value_and_expectation(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict(doc, "c.toml")
    assert str(caught.value).startswith("c.toml: ")
    assert message in str(caught.value)


def test_file_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nhost = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(binary)


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nudp_port = 9999\n[log]\nformat = "json"\n')
    config = load(path)
    assert config.server.udp_port == 9999
    assert config.server.http_port == 8470
    assert config.log.format == "json"


def test_alert_rules_from_the_file_replace_and_extend_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(
        "[[alerts.rules]]\nname = 'high_rtt'\nmetric = 'rtt_ms'\n"
        "raise_threshold = 250.0\nclear_threshold = 200.0\n"
        "[[alerts.rules]]\nname = 'mine'\nmetric = 'jitter_ms'\n"
        "raise_threshold = 50.0\nclear_threshold = 40.0\nscope = 'participant'\n"
    )
    rules = {rule.name: rule for rule in load(path).alerts.effective_rules()}
    assert rules["high_rtt"].raise_threshold == 250.0
    assert rules["mine"].metric == "jitter_ms"
    assert "low_mos" in rules
    path.write_text("[alerts]\nuse_default_rules = false\n")
    assert load(path).alerts.effective_rules() == []
    path.write_text("[[alerts.rules]]\nname = 'x'\nmetric = 'm'\nraise_threshold = 1.0\n")
    with pytest.raises(ConfigError, match="clear_threshold"):
        load(path)


def test_relative_paths_are_relative_to_the_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    etc.mkdir()
    elsewhere.mkdir()
    path = etc / "collector.toml"
    path.write_text("[storage]\nstate_dir = 'state'\nsqlite_path = 'db/rows.db'\n")
    monkeypatch.chdir(elsewhere)
    storage = load(path).storage
    assert storage.state_dir == str(etc / "state")
    assert storage.sqlite_file() == etc / "db" / "rows.db"
    monkeypatch.chdir(tmp_path)
    assert load(Path("etc/collector.toml")).storage == storage  # a relative --config too
    path.write_text("[storage]\nstate_dir = '/var/lib/bwmon'\n")
    assert load(path).storage.state_dir == "/var/lib/bwmon"
    assert load(path).storage.sqlite_file() == Path("/var/lib/bwmon/bwmon.db")


def test_without_a_file_the_state_is_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load(None).storage.state_dir == str(tmp_path / "state")
