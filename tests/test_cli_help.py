"""``bwmon --version`` and help texts that wrap at the terminal's width, not the source's."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cli.main import app, reflow
from protocol.build import running_build


def run(*args: str, columns: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=env,
        timeout=60, check=False,
    )  # fmt: skip


def test_version_names_the_release_the_build_and_python() -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr
    pattern = r"bwmon \d+\.\d+\.\d+ \((compiled|pure|partial) build, Python 3\.\d+\.\d+\)\n"
    assert re.fullmatch(pattern, result.stdout), result.stdout


def test_the_version_command_reports_the_build_that_runs() -> None:
    import collector.app  # noqa: F401  (imports the compiled modules, as the command does)

    assert f"({running_build().name} build" in run("--version").stdout


def test_reflow_joins_a_paragraphs_lines_and_keeps_list_items() -> None:
    text = """First line
        goes on here.

        - one item
          continued
        - two"""
    assert reflow(text) == "First line goes on here.\n\n- one item continued\n- two"


def commands() -> list[list[str]]:
    found = [
        [c.name or (c.callback.__name__ if c.callback else "")] for c in app.registered_commands
    ]
    for group in app.registered_groups:
        assert group.typer_instance is not None
        found += [
            [group.name or "", c.name or ""] for c in group.typer_instance.registered_commands
        ]
    return [c for c in found if all(c)]


@pytest.mark.parametrize("command", commands(), ids=" ".join)
def test_every_help_paragraph_is_one_line_on_a_wide_terminal(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    # The description is between the usage line and the first box; a paragraph broken where
    # the source broke it would show as a line that does not end a sentence or a clause.
    description: list[str] = []
    for line in lines[lines.index(next(x for x in lines if x.startswith("Usage:"))) + 1 :]:
        if line.startswith(("╭", "+-", "Options", "Arguments")):
            break
        description.append(line)
    paragraphs = [p for p in "\n".join(description).split("\n\n") if p.strip()]
    assert paragraphs, result.stdout
    for paragraph in paragraphs:
        inner = [
            line for line in paragraph.strip().splitlines() if not line.startswith(("- ", "* "))
        ]
        assert len(inner) <= 1, f"{' '.join(command)}: {paragraph!r}"
