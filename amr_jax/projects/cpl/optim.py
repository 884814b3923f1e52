"""CPL optimiser as an optax chain: torch global-norm clipping, fairseq Adam, fairseq inverse-sqrt warm-up schedule.

Update n (1-based) uses lr(n - 1), lr(0) = warmup_init_lr (the reference sets the lr after each step).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from amr_jax.ops import optim as ops_optim

ADAM_VARIANTS = ('fairseq', 'standard')


def inverse_sqrt_schedule(lr: float, warmup_updates: int, warmup_init_lr: float) -> Callable[[Any], Any]:
  """fairseq `inverse_sqrt`: linear warm-up from warmup_init_lr to lr over `warmup_updates`, then lr*sqrt(w/m).

  Returns:
    m (number of updates done, int array or int) -> learning rate (float32).
  """
  if warmup_updates < 1:
    raise ValueError(f'inverse_sqrt_schedule needs warmup_updates >= 1, got {warmup_updates}')
  lr_step = (lr - warmup_init_lr) / warmup_updates
  decay_factor = lr * math.sqrt(warmup_updates)

  def schedule(num_updates):
    m = jnp.asarray(num_updates, jnp.float32)
    warm = warmup_init_lr + m * lr_step
    decay = decay_factor * jax.lax.rsqrt(jnp.maximum(m, 1.0))
    return jnp.where(m < warmup_updates, warm, decay).astype(jnp.float32)

  return schedule


class FairseqAdamState(NamedTuple):
  """Adam state; `num_updates` is the schedule's counter (kept apart: a reference resume restarts `count` only)."""
  count: jax.Array         # Adam step t (int32)
  num_updates: jax.Array   # updates done so far = lr-schedule argument (int32)
  mu: Any
  nu: Any


def scale_by_fairseq_adam(schedule: Callable, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                          weight_decay: float = 0.0, variant: str = 'fairseq', lr_offset_by_one: bool = True,
                          initial_num_updates: int = 0) -> optax.GradientTransformation:
  """The reference's Adam (fairseq `Adam`, decoupled weight decay) producing the full parameter update.

  fairseq: p <- p - wd lr p - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps) (eps before the bias
  correction); 'standard': the optax/torch form m_hat / (sqrt(v_hat) + eps).

  Args:
    schedule: num_updates -> lr.
    b1, b2, eps: Adam constants.
    weight_decay: decoupled decay (0 in every CPL config).
    variant: 'fairseq' (reference) or 'standard'.
    lr_offset_by_one: update n uses lr(n - 1) (reference) or lr(n).
    initial_num_updates: schedule counter at init (a resumed reference run: its `num_updates`).

  Returns:
    An optax GradientTransformation whose updates are added to the params.
  """
  if variant not in ADAM_VARIANTS:
    raise ValueError(f'unknown adam variant {variant!r}; expected one of {ADAM_VARIANTS}')
  log_b1, log_b2 = math.log(b1), math.log(b2)

  def init_fn(params):
    zeros = lambda p: jnp.zeros_like(p, jnp.float32)  # noqa: E731
    return FairseqAdamState(count=jnp.zeros([], jnp.int32), num_updates=jnp.full([], initial_num_updates, jnp.int32),
                            mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    if weight_decay and params is None:
      raise ValueError('scale_by_fairseq_adam with weight decay needs params')
    count = state.count + 1
    lr = schedule(state.num_updates if lr_offset_by_one else state.num_updates + 1)
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * (g * g), state.nu, updates)
    t = count.astype(jnp.float32)
    bias1 = -jnp.expm1(t * log_b1)   # 1 - b1^t without cancellation
    bias2 = -jnp.expm1(t * log_b2)
    if variant == 'fairseq':
      step_size = lr * jnp.sqrt(bias2) / bias1
      step = jax.tree.map(lambda m, v: (-step_size * m) / (jnp.sqrt(v) + eps), mu, nu)
    else:
      step = jax.tree.map(lambda m, v: -lr * (m / bias1) / (jnp.sqrt(v / bias2) + eps), mu, nu)
    if weight_decay:
      step = jax.tree.map(lambda s, p: s - weight_decay * lr * p, step, params)
    return step, FairseqAdamState(count=count, num_updates=state.num_updates + 1, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(optim_cfg, resume_num_updates: int = 0) -> optax.GradientTransformation:
  """clip_grad_norm_(max_norm, eps 1e-6) -> fairseq Adam with the inverse-sqrt schedule (`config.optim`).

  Args:
    optim_cfg: lr, warmup_updates, warmup_init_lr, weight_decay, b1, b2, eps, clip_norm (<= 0: no clipping),
      clip_eps, adam_variant, lr_offset_by_one.
    resume_num_updates: schedule counter at init (0 for a fresh run).
  """
  get = lambda k, d: optim_cfg.get(k, d) if hasattr(optim_cfg, 'get') else getattr(optim_cfg, k, d)  # noqa: E731
  schedule = inverse_sqrt_schedule(float(get('lr', 4e-4)), int(get('warmup_updates', 400)),
                                   float(get('warmup_init_lr', 1e-7)))
  adam = scale_by_fairseq_adam(schedule, float(get('b1', 0.9)), float(get('b2', 0.999)), float(get('eps', 1e-8)),
                               float(get('weight_decay', 0.0)), str(get('adam_variant', 'fairseq')),
                               bool(get('lr_offset_by_one', True)), int(resume_num_updates))
  clip = float(get('clip_norm', 10.0))
  if clip <= 0:
    return adam
  return optax.chain(ops_optim.clip_by_global_norm_torch(clip, float(get('clip_eps', 1e-6))), adam)


def reset_adam_moments(opt_state):
  """The reference's resume: fresh Adam moments and step (checkpoints keep no optimiser state), schedule kept."""
  def reset(node):
    if isinstance(node, FairseqAdamState):
      zeros = lambda x: jnp.zeros_like(x)  # noqa: E731
      return node._replace(count=jnp.zeros_like(node.count), mu=jax.tree.map(zeros, node.mu),
                           nu=jax.tree.map(zeros, node.nu))
    return node
  return jax.tree.map(reset, opt_state, is_leaf=lambda n: isinstance(n, FairseqAdamState))


def current_lr(opt_state, optim_cfg):
  """The lr the next update will use (for logging)."""
  get = lambda k, d: optim_cfg.get(k, d) if hasattr(optim_cfg, 'get') else getattr(optim_cfg, k, d)  # noqa: E731
  schedule = inverse_sqrt_schedule(float(get('lr', 4e-4)), int(get('warmup_updates', 400)),
                                   float(get('warmup_init_lr', 1e-7)))
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, FairseqAdamState))
            if isinstance(s, FairseqAdamState)]
  if not states:
    raise ValueError('current_lr: no FairseqAdamState in the optimiser state')
  n = states[0].num_updates
  return schedule(n if bool(get('lr_offset_by_one', True)) else n + 1)
