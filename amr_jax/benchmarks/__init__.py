"""Timing suites (input pipeline, training, inference, evaluation) behind `launch/benchmark.py`.

Each suite module exposes `run(...) -> dict` with at least `suite`, `median_s` and `samples_per_s`.
"""
