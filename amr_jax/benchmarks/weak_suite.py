"""Train-step benchmark of CPL / MCMT at the real Charades-STA dims (200 clips -> 50, d 256, K 8, 20 words, batch 32).

`train(method)` times the trainer's jitted step (forward, loss, gradients, clipping, fairseq Adam) on random inputs.
"""
from __future__ import annotations

import importlib
import statistics
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.benchmarks import steps as steps_lib
from amr_jax.data import vocab as vocab_lib
from amr_jax.train import registry, sharding
from amr_jax.train.state import TrainState, make_train_step

REAL = dict(frames=200, words=20, frame_dim=1024, word_dim=300, vocab=1111)
TINY = dict(frames=48, words=8, frame_dim=40, word_dim=24, vocab=49)


def build_task(method: str, dims: str = 'real'):
  """(config, task) with dims given directly (a synthetic vocabulary of the recipe's size; no data read)."""
  size = REAL if dims == 'real' else TINY
  config = importlib.import_module(f'configs.{method}').get_config('' if dims == 'real' else 'tiny')
  vocab = vocab_lib.Vocabulary(tuple(f'w{i}' for i in range(size['vocab'])), (1,) * size['vocab'], size['vocab'])
  task_dims = {'frame_dim': size['frame_dim'], 'word_dim': size['word_dim'], 'vocab_size': vocab.size,
               'vocab': vocab.to_json()}
  return config, registry.task_class(method)(config, task_dims)


def random_train_batch(batch: int, dims: str = 'real', seed: int = 0) -> dict:
  """A train batch with the trainer's spec: random features, sentence lengths 5..W, POS-like weights."""
  size = REAL if dims == 'real' else TINY
  rng = np.random.default_rng(seed)
  width = size['words']
  lengths = rng.integers(min(5, width), width + 1, batch)
  words_mask = (np.arange(width)[None] < lengths[:, None]).astype(np.float32)
  raw = np.where(rng.random((batch, width)) < 0.5, 2.0, 1.0) * words_mask
  weights = np.where(words_mask > 0, np.exp(raw), 0.0)
  weights = (weights / weights.sum(1, keepdims=True)).astype(np.float32)
  return {
      'frames_feat': rng.standard_normal((batch, size['frames'], size['frame_dim'])).astype(np.float32),
      'frames_mask': np.ones((batch, size['frames']), np.float32),
      'words_id': (rng.integers(1, size['vocab'] + 1, (batch, width)) * words_mask).astype(np.int32),
      'words_feat': (rng.standard_normal((batch, width, size['word_dim'])) * words_mask[..., None]).astype(np.float32),
      'words_mask': words_mask, 'weights': weights, 'sample_valid': np.ones(batch, np.float32),
      'epoch': np.full(batch, 7, np.int32), 'sample_index': np.arange(batch, dtype=np.int32)}


def train(method: str = 'cpl', batch: int = 32, dims: str = 'real', steps: int = 10,
          num_devices: Optional[int] = None) -> dict:
  """Times the trainer's step of `method` ('cpl' | 'mcmt'); samples_per_s counts queries."""
  if method not in ('cpl', 'mcmt'):
    raise ValueError(f"method must be 'cpl' or 'mcmt', got {method!r}")
  _, task = build_task(method, dims)
  mesh = sharding.make_mesh(num_devices)
  host = random_train_batch(batch, dims)
  params, _ = task.init_params(jax.random.key(0), host)
  tx = task.optimizer(100, 10000)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen_params=None,
                     opt_state=tx.init(params), bad_steps=jnp.zeros((), jnp.int32))
  state = jax.device_put(state, sharding.replicated(mesh))
  fn = jax.jit(make_train_step(task, tx))   # no donation: the same state is reused for every timed call
  compile_s, flops, times = steps_lib.time_calls(fn, (state, sharding.to_global(host, mesh), jax.random.key(0)),
                                                 steps)
  flops *= mesh.size
  median = statistics.median(times)
  peak = steps_lib.matmul_peak_gflops()
  achieved = flops / median / 1e9 if flops == flops else float('nan')
  return dict(suite=f'{method}_train', dims=dims, batch=batch, devices=mesh.size, backend=jax.default_backend(),
              median_s=median, min_s=min(times), max_s=max(times), samples_per_s=batch / median,
              compile_s=compile_s, steps=len(times), peak_rss_mb=steps_lib.peak_rss_mb(),
              gflop_per_step=flops / 1e9, achieved_gflops=achieved, matmul_peak_gflops=peak,
              fraction_of_peak=achieved / peak if peak else float('nan'))
