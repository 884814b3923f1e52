"""Batched inference for the trainer and the predictor: a task's jittable fn over padded batches on a mesh.

`make_runner(mesh)` returns the contract's BatchRunner: jit (cached per fn), shard, gather to host, drop padding.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from amr_jax.train import sharding


def make_runner(mesh) -> Callable:
  """BatchRunner over `mesh`: yields (host_outputs, host_batch) per batch, rows with sample_valid = 0 removed."""
  compiled: dict = {}
  ready: set = set()

  def gather(tree: dict) -> dict:
    if jax.process_count() == 1:
      return {k: np.asarray(v) for k, v in tree.items()}
    return {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in tree.items()}

  def run(fn, params, data, batch_size: int) -> Iterator[tuple]:
    if fn not in compiled:
      compiled[fn] = jax.jit(fn)
    jitted = compiled[fn]
    batch_size = int(math.ceil(batch_size / mesh.size) * mesh.size)
    for batch in data.batches(batch_size, jax.process_index(), jax.process_count()):
      numeric = {k: v for k, v in batch.items() if np.asarray(v).dtype.kind in 'biuf'}
      placed = sharding.to_global(numeric, mesh)
      if fn not in ready:
        sharding.compile_together(jitted, params, placed, name='eval_fn_compiled')
        ready.add(fn)
      outputs = gather(jitted(params, placed))
      host_batch = gather(placed) if jax.process_count() > 1 else {k: np.asarray(v) for k, v in numeric.items()}
      keep = host_batch['sample_valid'] > 0
      yield {k: v[keep] for k, v in outputs.items()}, {k: v[keep] for k, v in host_batch.items()}

  return run
