"""``[[notify]]`` in the configuration: the reference documents every key with its default, and
errors name the key without the values that hold secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from collector.config import ConfigError, NotifySinkConfig, from_dict
from tests.helpers import bwmon

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"
REQUIRED = {"name", "kind"}


def test_the_reference_documents_every_key_with_its_default() -> None:
    table = REFERENCE.read_text().split("## `[[notify]]`", 1)[1]
    sink = msgspec.to_builtins(NotifySinkConfig(name="n", kind="webhook", url="http://x/"))
    sink["url"] = ""
    for key, default in sink.items():
        if key in REQUIRED:
            assert f"| `{key}` | (required) |" in table, key
            continue
        shown = f'"{default}"' if isinstance(default, str) else str(default)
        assert f"| `{key}` | `{shown}` |" in table, f"{key} = {shown}"


@pytest.mark.parametrize(
    ("sinks", "message"),
    [
        ([{"name": "a", "kind": "pager", "url": "http://x/"}], "notify[0].kind = 'pager'"),
        ([{"name": "a", "kind": "slack"}], "notify[a]: give url or url_env"),
        (
            [
                {
                    "name": "a",
                    "kind": "webhook",
                    "url": "http://x/",
                    "secret": "s",
                    "secret_env": "E",
                }
            ],
            "give one of secret, secret_env, secret_file",
        ),
        (
            [{"name": "a", "kind": "slack", "url": "http://x/"}] * 2,
            "notify: sink names must be unique: a",
        ),
        (
            [{"name": "a", "kind": "alertmanager", "url": "http://x/", "labels": {"a-b": "1"}}],
            "'a-b' is not a Prometheus label name",
        ),
    ],
)
def test_errors_name_the_key(sinks: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict({"notify": sinks}, "c.toml")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "sink",
    [
        {"name": "a", "kind": "slack", "url": "ftp://hooks.example.com/T/B/SECRETPART"},
        {"name": "a", "kind": "webhook", "url": "http://x/", "secret": 12345},
        {"name": "a", "kind": "webhook", "url": "http://x/", "headers": {"k": 1}},
    ],
)
def test_errors_never_show_a_url_a_secret_or_a_header(sink: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict({"notify": [sink]}, "c.toml")
    text = str(caught.value)
    assert "SECRETPART" not in text
    assert "12345" not in text
    assert "notify[0]" in text


def test_check_config_redacts_urls_secrets_and_headers_and_reads_secret_files(
    tmp_path: Path,
) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(
        "[[notify]]\nname = 'chat'\nkind = 'slack'\n"
        "url = 'https://hookuser:PASSWORD@hooks.example.com/services/T0/B0/SECRETPART'\n"
        "headers = { Authorization = 'Bearer TOKENVALUE' }\n"
        "[[notify]]\nname = 'hook'\nkind = 'webhook'\nurl = 'http://127.0.0.1/'\n"
        f"secret_file = '{tmp_path / 'missing'}'\n"
    )
    missing = bwmon("check-config", str(path))
    assert missing.returncode == 2
    assert "notify[hook].secret_file: cannot read" in missing.stderr

    (tmp_path / "missing").write_text("HOOKSECRET\n")
    checked = bwmon("check-config", str(path))
    assert checked.returncode == 0, checked.stderr
    for secret in ("PASSWORD", "SECRETPART", "TOKENVALUE", "HOOKSECRET", "hookuser"):
        assert secret not in checked.stdout
    shown = json.loads(checked.stdout)["notify"][0]
    assert shown["url"].startswith("https://hooks.example.com[redacted: ")
