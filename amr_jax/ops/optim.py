"""Optimiser of the reference: PyTorch-style global-norm clipping, then AdamW with decoupled decay, StepLR schedule.

Parameters that receive no gradient in the reference (the unused text positional table; in stage 2 the stage-1
`query_embed`) are frozen through `optax.partition`: no update, no decay, no Adam state.
"""
import re
from typing import Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import optax

TRAINABLE = 'trainable'
FROZEN = 'frozen'

# A parameter path (components joined with '/') gets no gradient when any predicate matches.
_STAGE1_NO_GRAD_PATTERNS = (r'(^|[/.])txt_pos(ition)?_embed([/.]|$)',)
_STAGE2_NO_GRAD_PATTERNS = _STAGE1_NO_GRAD_PATTERNS + (r'(^|[/.])query_embed([/.]|$)',)


def clip_by_global_norm_torch(max_norm, eps=1e-6):
  """`torch.nn.utils.clip_grad_norm_`: scale all updates by `max_norm / (norm + eps)` when that factor is < 1.

  Unlike `optax.clip_by_global_norm` (which divides by the norm exactly and triggers at norm >= max_norm) this
  reproduces PyTorch's epsilon and trigger.

  Args:
    max_norm: maximum global L2 norm.
    eps: PyTorch's epsilon added to the norm.

  Returns:
    An `optax.GradientTransformation` with an empty state.
  """

  def update_fn(updates, state, params=None):
    del params
    total_norm = optax.tree.norm(updates)
    clip_coef = jnp.minimum(max_norm / (total_norm + eps), 1.0)
    updates = jax.tree.map(lambda g: g * clip_coef.astype(g.dtype), updates)
    return updates, state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def step_lr_schedule(base_lr, lr_drop_epochs, steps_per_epoch, gamma=0.1):
  """PyTorch StepLR stepped once per epoch, as an optax schedule over optimiser steps.

  lr(step) = base_lr · gamma^floor(epoch / lr_drop_epochs), epoch = floor(step / steps_per_epoch).

  Args:
    base_lr: initial learning rate.
    lr_drop_epochs: StepLR step size in epochs.
    steps_per_epoch: optimiser steps per epoch.
    gamma: multiplicative decay.

  Returns:
    `optax.Schedule`.
  """
  if lr_drop_epochs <= 0 or steps_per_epoch <= 0:
    raise ValueError(f'lr_drop_epochs={lr_drop_epochs} and steps_per_epoch={steps_per_epoch} must be positive')
  steps_per_drop = int(lr_drop_epochs) * int(steps_per_epoch)

  def schedule(step):
    num_drops = jnp.asarray(step) // steps_per_drop
    return base_lr * jnp.power(jnp.asarray(gamma, jnp.float32), num_drops.astype(jnp.float32))

  return schedule


def _path_to_str(path):
  """A pytree key path -> 'a/b/c' (dict keys, attribute names and sequence indices)."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    else:
      parts.append(str(key))
  return '/'.join(parts)


def _stage_index(stage):
  """'pretrain' / 'stage1' / 1 -> 1; 'distill' / 'stage2' / 2 -> 2."""
  if stage in ('pretrain', 'stage1', 1, '1'):
    return 1
  if stage in ('distill', 'stage2', 2, '2'):
    return 2
  raise ValueError(f'unknown stage {stage!r}; expected "pretrain"/"distill" (or 1/2)')


def params_without_grad_mask(params, stage, no_grad_patterns: Optional[Iterable[str]] = None,
                             path_predicate: Optional[Callable[[str], bool]] = None):
  """Bool pytree, True for parameters that get no gradient in the reference (to be frozen).

  A leaf is frozen when its path ('/'-joined keys; flat PyTorch names such as 'query_embed.weight' also work)
  matches any regex in `no_grad_patterns` or satisfies `path_predicate`. Defaults: any path component named
  `txt_position_embed` / `txt_pos_embed`; in stage 2 also a component named exactly `query_embed` (so
  `new_query_embed` stays trainable).

  Args:
    params: parameter pytree (Flax params or a flat dict of PyTorch names).
    stage: 'pretrain' (stage 1) or 'distill' (stage 2); 1/2 also accepted.
    no_grad_patterns: override of the default regexes.
    path_predicate: extra `fn(path_str) -> bool`.

  Returns:
    pytree of Python bools with the structure of `params`.
  """
  if no_grad_patterns is None:
    no_grad_patterns = _STAGE2_NO_GRAD_PATTERNS if _stage_index(stage) == 2 else _STAGE1_NO_GRAD_PATTERNS
  compiled = [re.compile(p) for p in no_grad_patterns]

  def is_frozen(path, _):
    path_str = _path_to_str(path)
    if any(p.search(path_str) for p in compiled):
      return True
    return bool(path_predicate(path_str)) if path_predicate is not None else False

  return jax.tree_util.tree_map_with_path(is_frozen, params)


def params_with_grad_mask(params, stage, **kwargs):
  """The complement of `params_without_grad_mask`: True for parameters the optimiser updates."""
  return jax.tree.map(lambda frozen: not frozen, params_without_grad_mask(params, stage, **kwargs))


def make_optimizer(optim_cfg, params=None, trainable_mask=None, lr_schedule=None):
  """clip_grad_norm_(grad_clip) + AdamW(lr, (b1, b2), eps, weight_decay on every trainable param).

  Args:
    optim_cfg: config with `lr`, `b1`, `b2`, `eps`, `weight_decay`, `grad_clip`.
    params: parameter pytree, used to check the structure of a pytree `trainable_mask`; may be None. A callable
      passed here (with `trainable_mask` None) is taken as the trainable-mask function.
    trainable_mask: True = trainable; a bool pytree like `params`, or a function `params -> bool pytree` (e.g.
      `functools.partial(params_with_grad_mask, stage=...)`); None = everything trainable. Frozen leaves get
      neither update nor decay and hold no optimiser state; they are also left out of the clipping norm.
    lr_schedule: optional `optax.Schedule` (e.g. `step_lr_schedule`); default constant `optim_cfg.lr`.

  Returns:
    `optax.GradientTransformation`.
  """
  if callable(params) and trainable_mask is None:
    params, trainable_mask = None, params
  learning_rate = lr_schedule if lr_schedule is not None else optim_cfg.lr
  trainable_tx = optax.chain(
      clip_by_global_norm_torch(optim_cfg.grad_clip),
      optax.adamw(learning_rate=learning_rate, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                  weight_decay=optim_cfg.weight_decay),
  )
  if trainable_mask is None:
    return trainable_tx
  to_labels = lambda mask: jax.tree.map(lambda trainable: TRAINABLE if trainable else FROZEN, mask)  # noqa: E731
  if callable(trainable_mask):
    labels = lambda params: to_labels(trainable_mask(params))  # noqa: E731
  else:
    labels = to_labels(trainable_mask)
    if params is not None and jax.tree.structure(labels) != jax.tree.structure(params):
      raise ValueError('trainable_mask must have the structure of params')
  return optax.partition({TRAINABLE: trainable_tx, FROZEN: optax.set_to_zero()}, labels)
