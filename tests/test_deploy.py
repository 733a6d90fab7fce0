"""What deploy/ ships and tells an operator: the systemd unit's restart rule, the install steps,
the database grants and the configuration edit, checked against the code they describe."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cli.main import EXIT_CONFIG
from collector.config import load
from collector.storage.sinks import MYSQL_PRIVILEGES

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "bwmon.service"
DEPLOY = ROOT / "deploy" / "README.md"
EXAMPLE = ROOT / "collector.toml.example"


def directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, _, value = line.partition("=")
            found.setdefault(name, []).append(value)
    return found


def test_the_unit_never_restarts_a_daemon_whose_configuration_is_wrong() -> None:
    unit = directives(UNIT.read_text())
    assert unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]
    # systemd applies RestartPreventExitStatus= to the main process only: a configuration check
    # in ExecStartPre= that fails would be restarted. `bwmon serve` runs the check itself.
    assert "ExecStartPre" not in unit
    assert unit["ExecStart"] == ["/opt/bwmon/venv/bin/bwmon serve"]


def test_the_install_steps_install_the_pinned_versions() -> None:
    text = DEPLOY.read_text()
    installs = [
        line.split("#")[0].strip()
        for line in text.splitlines()
        if line.startswith("sudo") and "pip install" in line
    ]
    assert installs, "no install step"
    for command in installs:
        # every install either takes the lock or adds nothing the lock did not pin
        assert "-r requirements.lock" in command or "--no-deps" in command, command
    lock = installs.index(next(c for c in installs if "-r requirements.lock" in c))
    assert any("--no-deps" in c for c in installs[lock + 1 :])


def test_the_deploy_notes_describe_authentication_as_it_is() -> None:
    text = DEPLOY.read_text()
    assert "no authentication" not in text
    for reference in ("§2.3", "§7.8", "§13", "auth.token_secrets", "auth.udp_keys"):
        assert reference in text


def test_the_grants_are_one_list_everywhere() -> None:
    listed = ", ".join(MYSQL_PRIVILEGES)
    grant = re.search(r"GRANT ([A-Z, ]+) ON", DEPLOY.read_text())
    assert grant is not None
    assert grant.group(1) == listed
    assert listed in (ROOT / "docs" / "CONFIG.md").read_text()
    assert listed in EXAMPLE.read_text()


@pytest.mark.skipif(shutil.which("sed") is None, reason="needs sed")
def test_the_configuration_edit_puts_the_state_in_the_units_state_directory(
    tmp_path: Path,
) -> None:
    """The README's install step copies the example to /etc/bwmon and points state_dir at the
    unit's StateDirectory (a relative state_dir would be relative to /etc/bwmon)."""
    text = DEPLOY.read_text()
    edit = re.search(r"sudo sed -i '([^']+)' /etc/bwmon/collector.toml", text)
    assert edit is not None
    config = tmp_path / "etc" / "bwmon" / "collector.toml"
    config.parent.mkdir(parents=True)
    shutil.copy(EXAMPLE, config)
    subprocess.run(["sed", "-i", edit.group(1), str(config)], check=True)
    state_directory = directives(UNIT.read_text())["StateDirectory"] == ["bwmon"]
    assert state_directory
    assert load(config).storage.state_dir == "/var/lib/bwmon"
    assert "/var/lib/bwmon/bwmon.db" in text
