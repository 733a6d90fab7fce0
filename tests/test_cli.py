"""The ``bwmon`` command as a user runs it: exit codes and messages."""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path

import pytest

from cli.main import EXIT_CONFIG
from cli.synthetic import Profile, make_participants, make_routes
from collector.config import defaults_as_dict
from collector.storage.schema import migrations
from protocol import decode_message, encode_msgpack
from protocol.tokens import verify
from tests.helpers import bwmon

ROOT = Path(__file__).resolve().parents[1]


def test_check_config_accepts_the_example_and_prints_it() -> None:
    result = bwmon("check-config", str(ROOT / "collector.toml.example"))
    assert result.returncode == 0
    assert json.loads(result.stdout)["server"]["udp_port"] == 8470
    assert "ok" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nudp_port = 70000\n", "server.udp_port = 70000: expected int <= 65535"),
        ("[server]\nprot = 1\n", "unknown key 'server.prot'"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_check_config_names_the_problem_and_exits_2(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(text)
    result = bwmon("check-config", str(path))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_a_busy_port_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        # no --config: the state goes to ./state, here in tmp_path
        result = bwmon("serve", "--udp-port", str(port), "--http-port", "0", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_emit_to_nobody_over_websocket_fails_cleanly() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = bwmon("emit", "--transport", "ws", "--http-port", str(port), "--duration", "1")
    assert result.returncode == 1
    assert "bwmon emit:" in result.stderr
    assert "Traceback" not in result.stderr


def test_synthetic_samples_are_valid_frames_with_rising_counters() -> None:
    participant = make_participants(1, 1, Profile())[0]
    first, second = participant.sample(1_000.0, 1.0), participant.sample(2_000.0, 1.0)
    for frame in (first, second):
        decoded = decode_message(encode_msgpack(frame))
        assert decoded.errors == []
    assert second.seq == first.seq + 1
    assert second.video_bytes_sent > first.video_bytes_sent  # type: ignore[operator]
    assert second.audio_packets_received > first.audio_packets_received  # type: ignore[operator]
    route = make_routes(1, "b00t")[0]
    sample = route.sample(1_000.0, 1.0, random.Random(1), "svc", "inst")
    assert decode_message(encode_msgpack(sample)).errors == []


def test_migrate_dry_run_changes_nothing_then_migrate_is_idempotent(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(f"[storage]\nstate_dir = '{tmp_path / 'state'}'\n")
    dry = bwmon("migrate", "--config", str(config), "--dry-run")
    assert dry.returncode == 0
    assert "CREATE TABLE IF NOT EXISTS rtc_minute" in dry.stdout
    assert not (tmp_path / "state").exists()
    first = bwmon("migrate", "--config", str(config))
    assert first.returncode == 0
    statements = sum(len(m.statements()) for m in migrations("sqlite"))
    assert f"applied {statements} statements" in first.stderr
    again = bwmon("migrate", "--config", str(config))
    assert "applied 0 statements" in again.stderr
    assert (tmp_path / "state" / "bwmon.db").exists()


def test_migrate_reports_an_unreachable_database_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text("[storage]\nbackend = 'mysql'\nmysql_port = 1\n")
    result = bwmon("migrate", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.startswith("bwmon migrate: mysql:")
    assert "Traceback" not in result.stderr


def test_token_mint_prints_a_token_the_daemon_accepts(tmp_path: Path) -> None:
    key = "mint-test-key-" + "k" * 20
    config = tmp_path / "collector.toml"
    config.write_text(f"[auth]\ntoken_secrets = ['{key}', '{'o' * 32}']\n")
    result = bwmon(
        "token", "mint", "--config", str(config), "--meeting", "standup", "--right", "ingest",
        "--right", "read", "--ttl", "120",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    claims = verify([key], result.stdout.strip(), time.time())
    assert (claims.meeting, claims.rights) == ("standup", ["ingest", "read"])
    assert time.time() + 100 < claims.exp <= time.time() + 121
    default = bwmon("token", "mint", "--config", str(config))
    assert verify([key], default.stdout.strip(), time.time()).rights == ["read"]


def test_token_mint_without_a_key_or_with_a_bad_right_exits_2(tmp_path: Path) -> None:
    no_key = bwmon("token", "mint")
    assert no_key.returncode == 2
    assert "auth.token_secrets" in no_key.stderr
    config = tmp_path / "collector.toml"
    config.write_text(f"[auth]\ntoken_secrets = ['{'k' * 32}']\n")
    bad = bwmon("token", "mint", "--config", str(config), "--right", "admin")
    assert bad.returncode == 2
    assert "rights: ingest, read" in bad.stderr
    assert bad.stdout == ""


def test_check_config_never_prints_a_secret(tmp_path: Path) -> None:
    secrets = ["token-key-" + "a" * 30, "udp-key-" + "b" * 30, "db-pass-word", "r3dis-pw"]
    config = tmp_path / "collector.toml"
    config.write_text(
        f"[auth]\ntoken_secrets = ['{secrets[0]}']\nudp_keys = ['{secrets[1]}']\n"
        f"[storage]\nmysql_password = '{secrets[2]}'\n"
        f"[fanout]\nredis_url = 'redis://:{secrets[3]}@127.0.0.1:6379/0'\n"
    )
    result = bwmon("check-config", str(config))
    assert result.returncode == 0, result.stderr
    for secret in secrets:
        assert secret not in result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert shown["auth"]["token_secrets"] == ["[redacted: 40 characters, from the file]"]
    assert shown["storage"]["mysql_password"] == "[redacted: 12 characters, from the file]"


def test_check_config_shows_where_secrets_come_from_and_checks_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys from the environment: shown as keys from there (not as the file's empty list),
    and held to the file's length rule by check-config, serve and token mint alike."""
    keys = ["env-token-key-" + "e" * 30, "env-token-key-" + "n" * 30]
    monkeypatch.setenv("BWMON_TOKEN_SECRETS", ",".join(keys))
    monkeypatch.setenv("BWMON_UDP_KEYS", "udp-key-" + "u" * 40)
    monkeypatch.setenv("BWMON_MYSQL_PASSWORD", "")  # set, empty: wins over the file's
    monkeypatch.delenv("BWMON_REDIS_URL", raising=False)
    config = tmp_path / "collector.toml"
    config.write_text(
        "[server]\nhost = '0.0.0.0'\n[storage]\nbackend = 'none'\n"
        "mysql_password = 'file-pass-word'\n"
    )
    result = bwmon("check-config", str(config))
    assert result.returncode == 0, result.stderr
    for secret in [*keys, "u" * 40, "file-pass-word"]:
        assert secret not in result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert (
        shown["auth"]["token_secrets"]
        == ["[redacted: 44 characters, from BWMON_TOKEN_SECRETS]"] * 2
    )
    assert shown["auth"]["udp_keys"] == ["[redacted: 48 characters, from BWMON_UDP_KEYS]"]
    assert shown["storage"]["mysql_password"] == ""
    assert shown["fanout"]["redis_url"] == ""

    monkeypatch.setenv("BWMON_TOKEN_SECRETS", f"{keys[0]},ab")  # "ab" passed the bind rule
    refused = "bwmon: BWMON_TOKEN_SECRETS[1] (environment): 2 characters, at least 32 required\n"
    for command in (
        ["check-config", str(config)],
        ["serve", "--config", str(config), "--udp-port", "0", "--http-port", "0"],
        ["serve", "--config", str(config), "--host", "127.0.0.1", "--udp-port", "0"],
        ["token", "mint", "--config", str(config)],
    ):
        result = bwmon(*command)
        assert (result.returncode, result.stderr, result.stdout) == (EXIT_CONFIG, refused, "")


@pytest.mark.parametrize(
    ("auth", "secret", "message"),
    [
        (
            "token_secrets = ['{key}', 'twelve-chars']",
            "twelve-chars",
            "auth.token_secrets[1]: 12 characters, at least 32 required",
        ),
        ("udp_keys = ['{long}']", "L" * 513, "auth.udp_keys[0]: 513 characters, at most 512"),
        (
            "token_secrets = ['{key}']\nudp_keys = ['{key}']\nudp_allow = ['10.0.0.300']",
            "k" * 40,
            "auth.udp_allow: '10.0.0.300' is not an IP address or network",
        ),
    ],
    ids=["too-short", "too-long", "udp-allow-typo"],
)
def test_a_bad_secret_in_the_file_is_named_never_printed(
    tmp_path: Path, auth: str, secret: str, message: str
) -> None:
    config = tmp_path / "collector.toml"
    text = auth.format(key="k" * 40, long="L" * 513)
    config.write_text(f"[storage]\nbackend = 'none'\n[auth]\n{text}\n")
    checked = bwmon("check-config", str(config))
    served = bwmon("serve", "--config", str(config), "--udp-port", "0", "--http-port", "0")
    assert (checked.returncode, served.returncode) == (EXIT_CONFIG, EXIT_CONFIG)
    assert checked.stderr == served.stderr
    assert checked.stderr.startswith(f"bwmon: {config}: {message}")
    assert secret not in checked.stderr


def test_an_alert_rule_on_an_unknown_metric_is_refused_by_check_config_and_serve(
    tmp_path: Path,
) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(
        "[storage]\nbackend = 'none'\n[[alerts.rules]]\nname = 'slow'\nmetric = 'rtt_msec'\n"
        "raise_threshold = 400.0\nclear_threshold = 300.0\n"
    )
    checked = bwmon("check-config", str(config))
    served = bwmon("serve", "--config", str(config), "--udp-port", "0", "--http-port", "0")
    assert (checked.returncode, served.returncode) == (EXIT_CONFIG, EXIT_CONFIG)
    assert (
        checked.stderr
        == served.stderr
        == (
            f"bwmon: {config}: alerts.rules[0].metric = 'rtt_msec': expected one of: "
            "'jitter_ms', 'loss_pct', 'mos', 'relay_tcp', 'rtt_ms'\n"
        )
    )


def test_check_config_warns_about_allow_unauthenticated_beyond_loopback(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(PUBLIC_WITHOUT_AUTH + "[auth]\nallow_unauthenticated = true\n")
    result = bwmon("check-config", str(config))
    assert result.returncode == 0
    warning, ok = result.stderr.splitlines()
    assert warning.startswith(
        "bwmon: warning: listening on 0.0.0.0 without authentication "
        "(auth.allow_unauthenticated = true): /ingest, /subscribe and /api take no token; "
        "UDP frames are taken from any address."
    )
    assert ok == f"{config}: ok"
    config.write_text("[storage]\nbackend = 'none'\n[auth]\nallow_unauthenticated = true\n")
    assert "warning" not in bwmon("check-config", str(config)).stderr  # loopback: nothing to say


# Configuration errors: exit 2 (EXIT_CONFIG) from every command, the status systemd does not
# restart on; serve and check-config apply the same checks.

PUBLIC_WITHOUT_AUTH = '[server]\nhost = "0.0.0.0"\n[storage]\nbackend = "none"\n'


def test_check_config_refuses_what_serve_refuses_with_the_same_line_and_exit_2(
    tmp_path: Path,
) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(PUBLIC_WITHOUT_AUTH)
    checked = bwmon("check-config", str(config))
    served = bwmon("serve", "--config", str(config), "--udp-port", "0", "--http-port", "0")
    assert (checked.returncode, served.returncode) == (EXIT_CONFIG, EXIT_CONFIG)
    assert checked.stdout == ""
    assert checked.stderr == served.stderr
    assert checked.stderr.startswith("bwmon: refusing to listen on 0.0.0.0 without authentic")
    assert checked.stderr.count("\n") == 1
    # The same check on the effective configuration: a --host override counts too.
    flag = bwmon("serve", "--host", "0.0.0.0", "--udp-port", "0", "--http-port", "0")
    assert flag.returncode == EXIT_CONFIG
    assert "refusing to listen on 0.0.0.0" in flag.stderr


def test_a_redis_url_the_driver_cannot_use_is_a_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(
        '[fanout]\nredis_url = "redis-host:6379:s3cret"\n[storage]\nbackend = "none"\n'
    )
    checked = bwmon("check-config", str(config))
    served = bwmon("serve", "--config", str(config), "--udp-port", "0", "--http-port", "0")
    assert (checked.returncode, served.returncode) == (EXIT_CONFIG, EXIT_CONFIG)
    assert checked.stderr == served.stderr
    assert "fanout.redis_url" in checked.stderr
    assert "s3cret" not in checked.stderr  # the URL may hold a password
    assert "Traceback" not in served.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--udp-port", "0", "--http-port", "0"],
        ["migrate"],
        ["migrate", "--dry-run"],
        ["export", "rtc"],
        ["token", "mint"],
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_every_command_exits_2_on_a_configuration_error(tmp_path: Path, command: list[str]) -> None:
    config = tmp_path / "collector.toml"
    config.write_text("[storage]\nstate_dri = 'x'\n")
    result = bwmon(*command, "--config", str(config))
    assert result.returncode == EXIT_CONFIG
    assert (
        result.stderr
        == f"bwmon: {config}: unknown key 'storage.state_dri'; expected one of: "
        + (", ".join(sorted(defaults_as_dict()["storage"])))
        + "\n"
    )
    assert result.stdout == ""


def test_serve_exits_2_when_it_cannot_use_the_state_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = tmp_path / "collector.toml"
    config.write_text("[storage]\nstate_dir = 'a-file/state'\n")
    result = bwmon("serve", "--config", str(config), "--udp-port", "0", "--http-port", "0")
    assert result.returncode == EXIT_CONFIG
    assert result.stderr == (
        f"bwmon: storage.state_dir = '{tmp_path / 'a-file' / 'state'}': cannot use it: "
        "Not a directory\n"
    )
