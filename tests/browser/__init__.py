"""Tests that drive the system Chromium (Playwright) through a real coturn on loopback: the
harness (turn.py, call.py, page/), the recorded getStats fixtures (record_fixtures.py) and the
browser client against the real daemon. ``make browser`` runs them (marker ``browser``)."""
