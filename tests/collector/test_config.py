"""Configuration: defaults, the example file, and errors that name key, value and expectation."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from collector.aggregate.alerts import DEFAULT_RULES, METRICS, AlertRule
from collector.aggregate.engine import Interval, _alert_metrics
from collector.aggregate.rtc import RtcStream
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
        if isinstance(values, list):  # [[notify]]: tests/notifications/test_config.py
            continue
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
        ({"server": {"prot": 1}}, "unknown key 'server.prot'; expected one of: cors_origins,"),
        (
            {"sever": {}},
            "unknown key 'sever'; expected one of: "
            "aggregate, alerts, auth, fanout, ingest, limits, log, metrics, notify, server",
        ),
        ({"log": {"level": "loud"}}, "log.level = 'loud': expected one of: 'debug'"),
        ({"ingest": {"ack_interval_s": 0}}, "ingest.ack_interval_s = 0: expected float > 0.0"),
        ({"ingest": {"max_datagram_bytes": 70000}}, "ingest.max_datagram_bytes = 70000"),
        ({"server": [1]}, "server = [1]: expected object, got array"),
        ({"server": {"max_connections": True}}, "server.max_connections = True: expected int"),
        (
            {"server": {"cors_origins": ["https://ops.example.com/"]}},
            "server.cors_origins[0] = 'https://ops.example.com/': expected an origin such as",
        ),
        ({"server": {"cors_origins": ["*", "ops.example.com"]}}, "cors_origins[1] = 'ops.exa"),
        ({"server": {"cors_origins": ["https://Ops.example.com"]}}, "lower-case host"),
        ({"server": {"cors_origins": ["https://ops.example.com:443"]}}, "unless the default"),
        ({"server": {"cors_origins": ["ftp://ops.example.com"]}}, "expected an origin"),
        ({"server": {"cors_origins": "https://ops.example.com"}}, "expected array, got str"),
    ],
)
def test_errors_name_key_value_and_expectation(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict(doc, "c.toml")
    assert str(caught.value).startswith("c.toml: ")
    assert message in str(caught.value)


def test_cors_origins_take_origins_as_browsers_send_them_and_the_wildcard() -> None:
    origins = ["https://ops.example.com", "http://127.0.0.1:3000", "http://[::1]:8080", "*"]
    assert from_dict({"server": {"cors_origins": origins}}).server.cors_origins == origins
    assert from_dict({}).server.cors_origins == []


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
    path.write_text("[[alerts.rules]]\nname = 'x'\nmetric = 'mos'\nraise_threshold = 1.0\n")
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


def rule(**fields: Any) -> dict[str, Any]:
    return {"name": "mine", "raise_threshold": 400.0, "clear_threshold": 300.0, **fields}


def test_an_alert_rule_on_an_unknown_metric_is_refused_with_the_metrics_it_may_watch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(
        "[[alerts.rules]]\nname = 'slow'\nmetric = 'rtt'\n"
        "raise_threshold = 400.0\nclear_threshold = 300.0\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == (
        f"{path}: alerts.rules[0].metric = 'rtt': expected one of: "
        + ", ".join(repr(metric) for metric in sorted(METRICS))
    )
    with pytest.raises(ValueError, match="unknown metric 'rtt'"):  # a rule built in code
        AlertRule(**rule(metric="rtt"))


def test_every_metric_a_rule_may_watch_is_one_the_engine_measures() -> None:
    interval = Interval(*[0.0] * len(Interval.__dataclass_fields__))
    assert set(_alert_metrics(interval, RtcStream("m1", "p1", "pc1"))) == set(METRICS)
    assert {rule.metric for rule in DEFAULT_RULES} <= set(METRICS)


# Secrets: the same rules wherever they come from, and never a secret's value in a message.

FILE_KEY = "file-token-key-" + "f" * 30
UDP_KEY = "file-udp-key-" + "u" * 30


@pytest.mark.parametrize(
    ("auth", "secret", "message"),
    [
        (
            {"token_secrets": [FILE_KEY, "short-secret-1234"]},
            "short-secret-1234",
            "auth.token_secrets[1]: 17 characters, at least 32 required",
        ),
        (
            {"udp_keys": ["L" * 600]},
            "L" * 600,
            "auth.udp_keys[0]: 600 characters, at most 512 allowed",
        ),
        (
            {"token_secrets": "one-secret-not-in-a-list-" + "z" * 20},
            "one-secret-not-in-a-list",
            "auth.token_secrets: expected array, got str",
        ),
        (
            {"token_secrets": [FILE_KEY], "udp_keys": [UDP_KEY], "udp_allow": ["10.0.0.300"]},
            FILE_KEY,
            "auth.udp_allow: '10.0.0.300' is not an IP address or network",
        ),
    ],
    ids=["too-short", "too-long", "not-a-list", "udp-allow-typo"],
)
def test_a_bad_auth_table_is_named_and_no_secret_is_printed(
    auth: dict[str, Any], secret: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict({"auth": auth}, "c.toml")
    text = str(caught.value)
    assert text.startswith(f"c.toml: {message}")
    for value in [secret, FILE_KEY, UDP_KEY]:
        assert value not in text


@pytest.mark.parametrize(
    "doc",
    [
        {"storage": {"mysql_password": ["pass-word-in-a-list"]}},
        {"fanout": {"redis_url": ["redis://:pass-word-in-a-list@host"]}},
        {"auth": ["pass-word-in-a-list"]},
        {"storage": ["pass-word-in-a-list"]},
    ],
)
def test_a_misplaced_secret_is_not_printed_either(doc: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict(doc, "c.toml")
    assert "expected" in str(caught.value)
    assert "pass-word-in-a-list" not in str(caught.value)


@pytest.mark.parametrize("variable", ["BWMON_TOKEN_SECRETS", "BWMON_UDP_KEYS"])
def test_keys_from_the_environment_meet_the_files_rules(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = from_dict({}).auth
    read = auth.secrets if variable == "BWMON_TOKEN_SECRETS" else auth.datagram_keys
    monkeypatch.setenv(variable, f"{FILE_KEY}, ab")
    with pytest.raises(ConfigError) as caught:
        read()
    assert str(caught.value) == f"{variable}[1] (environment): 2 characters, at least 32 required"
    monkeypatch.setenv(variable, "x" * 513)
    with pytest.raises(ConfigError, match=r"\[0\] \(environment\): 513 characters, at most 512"):
        read()
    monkeypatch.setenv(variable, f" {FILE_KEY} ,{UDP_KEY},")
    assert read() == [FILE_KEY, UDP_KEY]
