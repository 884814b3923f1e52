"""Where the stage-1 step's time goes: the same jitted pieces timed one by one at the real dims.

forward (train mode) -> + matcher & losses -> + backward (matcher indices fixed) -> full step (+ clip/AdamW).
"""
from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp

from amr_jax.projects.amr import losses as amr_losses
from amr_jax.benchmarks import steps
from amr_jax.train.state import TrainState, make_train_step


def _median(fn, args, repeats):
  compile_s, flops, times = steps.time_calls(fn, args, repeats)
  return statistics.median(times), compile_s, flops


def run(batch: int = 32, dims: str = 'real', repeats: int = 5, suite: str = 'train1') -> dict:
  config, task, spec = steps.build_task(suite, dims)
  host = steps.random_batch(batch, spec)
  dev = jax.device_put(host)
  rng = jax.random.key(0, impl='rbg')
  params = task.init_model_params(rng, {k: v[:1] for k, v in host.items()})

  def forward(p, b, r):
    return task.apply(p, b, train=True, rng=r)

  def forward_eval(p, b):
    return task.eval_forward(p, b)

  def matcher_only(p, b, r):
    out = jax.lax.stop_gradient(task.apply(p, b, train=True, rng=r))
    return amr_losses.match_all_layers(out, b, config.matcher)

  matcher_jit = jax.jit(matcher_only)
  indices = matcher_jit(params, dev, rng)

  def loss_fixed(p, b, r):
    return task.loss(p, None, b, r, train=True, indices=indices)[0]

  def loss_full(p, b, r):
    return task.loss(p, None, b, r, train=True)[0]

  tx = task.optimizer(100, 0)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen_params=None,
                     opt_state=tx.init(params), bad_steps=jnp.zeros((), jnp.int32))
  pieces = {
      'forward_eval': (jax.jit(forward_eval), (params, dev)),
      'forward_train': (jax.jit(forward), (params, dev, rng)),
      'forward+matcher': (matcher_jit, (params, dev, rng)),
      'forward+matcher+losses': (jax.jit(loss_full), (params, dev, rng)),
      'grad (indices fixed)': (jax.jit(jax.grad(loss_fixed)), (params, dev, rng)),
      'grad (with matcher)': (jax.jit(jax.grad(loss_full)), (params, dev, rng)),
      'full step': (jax.jit(make_train_step(task, tx)), (state, dev, rng)),
  }
  result = {}
  for name, (fn, args) in pieces.items():
    median, compile_s, flops = _median(fn, args, repeats)
    result[name] = dict(median_s=median, gflop=flops / 1e9, compile_s=compile_s)
    print(f'{name:>24}: {median * 1e3:8.1f} ms  {flops / 1e9:7.1f} GFLOP  ({flops / median / 1e9:6.1f} GFLOP/s)',
          flush=True)
  return result
