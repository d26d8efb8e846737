"""Benchmarks: each script measures alter-agents and a bare baseline side by side in one run."""
