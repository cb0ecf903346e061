"""Benchmarks, run by hand (``python -m benchmarks.<name>``); results go to benchmarks/results/
and, written up, to docs/performance.md. Each figure is a ratio measured in one run on one
machine. ``--smoke`` runs the smallest size (the tests do, so the scripts keep working)."""
