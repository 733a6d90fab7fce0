"""The build, for setuptools: pure Python unless ``BWMON_COMPILE=1``, which compiles the
ingest hot path (decode, aggregation) with mypyc into C extensions — the same source, type
checked by mypy: decode + aggregation 1.5 to 1.8 times as fast, the daemon at its limit 1.2 to 1.4
times (docs/BENCHMARKS.md, "Compiled with mypyc").

``make compiled`` builds them in place; ``make pure`` removes them. Beside each extension goes
the digest of the source it was built from: in a checkout, the packages refuse to import an
extension built from another source (``protocol/build.py``). The modules below must define no
msgspec Struct: mypyc does not keep a Struct's class options (``frozen``, ``kw_only``,
``gc``); tests/test_build.py checks it.
"""

import importlib.util
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

if os.environ.get("BWMON_COMPILE") == "1":
    from mypyc.build import mypycify

    # protocol/build.py by its path (stdlib only): the modules, and the digests' names.
    spec = importlib.util.spec_from_file_location("bwmon_build", "protocol/build.py")
    assert spec is not None
    assert spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    COMPILED = [name.replace(".", "/") + ".py" for name in build.COMPILED_MODULES]

    class BuildExtensions(build_ext):
        def run(self) -> None:
            super().run()
            root = Path(".") if self.inplace else Path(self.build_lib)
            for source in COMPILED:
                digest = build.digest_path(root / source)
                digest.write_text(build.source_digest(Path(source)) + "\n")

    setup(
        ext_modules=mypycify(COMPILED, opt_level="3", separate=True),
        cmdclass={"build_ext": BuildExtensions},
    )
else:
    setup()
