"""Sinks of run results: the CLI summary table and the per-record timelines."""
