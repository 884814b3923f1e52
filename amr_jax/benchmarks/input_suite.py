"""Benchmark suite `input`: tf.data batches/s over a planted store at the real feature widths.

Builds a planted store for the first N QVH train queries, caches it, then times the train pipeline.
"""
from __future__ import annotations

import pathlib
import statistics
import tempfile
import time

from amr_jax.data import annotations, features, planted
from data_pipelines import batches
from data_pipelines.examples import PadSpec

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRAIN = ROOT / 'data' / 'annotations' / 'qvhighlights' / 'highlight_train_release.jsonl'
PYTORCH_STEP_S = 1.55   # the original's stage-1 step at batch 32 on this machine (issue 7)


def run(batch: int = 32, dims: str = 'real', steps: int = 10, num_queries: int = 256,
        step_s: float | None = None) -> dict:
  records = annotations.load_annotations(TRAIN)[:num_queries]
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    planted.write_planted_store(records, tmp, seed=0, dims=dims)
    build_s = time.perf_counter() - t0
    store = features.FeatureStore(tmp)
    t0 = time.perf_counter()
    cache = batches.FeatureCache(store, records)
    cache_s = time.perf_counter() - t0
    spec = PadSpec(video_dim=store.video_dim, text_dim=store.text_dim)
  split = batches.Split(records=records, cache=cache, spec=spec)
  ds = batches.train_dataset(split, seed=0, global_batch=batch, start_step=0, num_steps=steps * 5 + 2)
  it = ds.as_numpy_iterator()
  next(it)  # warm-up
  times = []
  for _ in range(steps * 5):
    t = time.perf_counter()
    next(it)
    times.append(time.perf_counter() - t)
  median = statistics.median(times)
  demand = step_s or PYTORCH_STEP_S
  return dict(suite='input', dims=dims, batch=batch, median_s=median, min_s=min(times), max_s=max(times),
              batches_per_s=1 / median, samples_per_s=batch / median, store_build_s=build_s,
              cache_read_s=cache_s, cache_mb=cache.nbytes / 2**20, step_s_assumed=demand,
              ratio_to_step_demand=(1 / median) * demand)
