"""The dashboard's vendored libraries (``collector/http/ui/vendor/``) are exactly the files
their manifest names: unmodified, each with the SHA-256 its ``MANIFEST.json`` records, the
license next to them, and nothing else in the folder. tests/browser/test_ui_vendor_npm.py
checks that the recorded files are the npm package's own."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

VENDOR = Path(__file__).resolve().parents[2] / "collector" / "http" / "ui" / "vendor"
LIBRARIES = sorted(path.parent for path in VENDOR.glob("*/MANIFEST.json"))


def manifest(library: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((library / "MANIFEST.json").read_text())
    return loaded


def test_uplot_is_vendored_at_a_pinned_version() -> None:
    assert [library.name for library in LIBRARIES] == ["uplot"]
    uplot = manifest(VENDOR / "uplot")
    assert uplot["package"] == "uplot"
    assert uplot["version"].count(".") == 2
    assert uplot["license"] == "MIT"
    assert {"LICENSE", "uPlot.esm.js", "uPlot.min.css"} <= set(uplot["files"])


@pytest.mark.parametrize("library", LIBRARIES, ids=lambda path: path.name)
def test_every_vendored_file_has_the_hash_of_its_manifest(library: Path) -> None:
    files = manifest(library)["files"]
    present = {path.name for path in library.iterdir()} - {"MANIFEST.json"}
    assert present == set(files), "the folder holds exactly the files the manifest names"
    for name, entry in files.items():
        digest = hashlib.sha256((library / name).read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"{library.name}/{name} differs from its manifest"


@pytest.mark.parametrize("library", LIBRARIES, ids=lambda path: path.name)
def test_every_vendored_library_carries_its_license(library: Path) -> None:
    license_text = (library / "LICENSE").read_text()
    assert manifest(library)["license"] in license_text
    assert "Permission is hereby granted" in license_text
