"""Benchmarks: each module has ``run() -> list[Row]``; ``python -m bench`` prints them all."""
