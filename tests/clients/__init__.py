"""Tests of the clients under clients/ that run under pytest."""
