"""The dashboard's vendored uPlot is the npm package's own files at the version its manifest
pins: the package is installed into the benchmarks' cache (never the repository) and every
file the manifest names is compared byte for byte with the package's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.bench.harness import NpmUnavailable, npm_package

pytestmark = pytest.mark.browser

UPLOT = Path(__file__).resolve().parents[2] / "collector" / "http" / "ui" / "vendor" / "uplot"


def test_vendored_uplot_equals_the_npm_package_of_its_version() -> None:
    manifest = json.loads((UPLOT / "MANIFEST.json").read_text())
    try:
        package_json = npm_package(manifest["package"], manifest["version"], "package.json")
    except NpmUnavailable as exc:
        pytest.fail(f"the npm package cannot be had to compare with: {exc}")
    package = package_json.parent
    assert json.loads(package_json.read_text())["license"] == manifest["license"]
    for name, entry in manifest["files"].items():
        assert (UPLOT / name).read_bytes() == (package / entry["from"]).read_bytes(), name
