"""The benchmarks behind ``bwmon bench`` (docs/BENCHMARKS.md), one module each.

``commands`` declares the typer commands that ``cli.main`` mounts; ``harness`` holds what the
benchmarks share. ``ingest``, ``aggregate``, ``storage`` and ``fanout`` are the benchmarks of
those names; ``all`` runs them with ``compare`` (ingest side by side with ``statsd`` and the
bare receiver, ``ceiling``) and ``e2e``. ``ceiling``, ``e2e_probe`` and ``fanout_client`` are
helper processes the benchmarks start with ``python -m``.

Imports run one way: ``commands`` → the benchmarks → ``harness``; this file imports nothing,
so that ``python -m cli.bench.<child>`` loads only what that child needs.
"""
