"""Sinks of run results: the CLI summary and timelines (metrics, traces and audit come later)."""
