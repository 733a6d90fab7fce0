"""``bwmon bench``: benchmarks that print one JSON object each (see docs/BENCHMARKS.md)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmarks; each prints JSON with --json.", no_args_is_help=True)
