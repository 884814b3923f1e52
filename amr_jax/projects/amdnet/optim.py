"""The AMDNet repo's optimiser, BertAdam with the warmup_linear schedule, as an optax chain exact to PyTorch.

Per-tensor grad clipping, Adam moments without bias correction, decoupled decay masked by parameter name.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from amr_jax.ops import optim as shared_optim

# The repo's `no_decay` list (Opts/builder.py): a parameter is not decayed when its name contains one of these.
NO_DECAY_SUBSTRINGS = ('bias', 'LayerNorm.bias', 'LayerNorm.weight')
_TORCH_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight'}


def torch_style_name(path: Sequence[Any]) -> str:
  """A Flax param path -> the dotted name the repo's substring rule sees ('kernel'/'scale' -> 'weight').

  The Flax module names of `model.AMDNet` are the repo's attribute names, so e.g.
  ('clip_encoder', 'clip2video', 'layernorm', 'scale') -> 'clip_encoder.clip2video.layernorm.weight'.
  """
  names = [str(getattr(p, 'key', getattr(p, 'name', p))) for p in path]
  names[-1] = _TORCH_LEAF_NAMES.get(names[-1], names[-1])
  return '.'.join(names)


def is_decayed(name: str, decay_lowercase_layernorm: bool = True) -> bool:
  """The repo's rule: decay unless the name contains a no-decay substring (case-sensitive: quirk 17 leaves the
  lowercase `clip2video.layernorm.weight` decayed; decay_lowercase_layernorm=False matches case-insensitively)."""
  if decay_lowercase_layernorm:
    return not any(s in name for s in NO_DECAY_SUBSTRINGS)
  lowered = name.lower()
  return not any(s.lower() in lowered for s in NO_DECAY_SUBSTRINGS)


def decay_mask(params: Any, decay_lowercase_layernorm: bool = True) -> Any:
  """Pytree of bools (True = weight decay applies) built from the Flax param paths, for `optax.masked`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: is_decayed(torch_style_name(path), decay_lowercase_layernorm), params)


def warmup_linear(x: jax.Array, warmup: float) -> jax.Array:
  """pytorch-pretrained-bert `warmup_linear`: x / warmup while x < warmup, else max((x - 1)/(warmup - 1), 0)."""
  x = jnp.asarray(x, jnp.float32)
  return jnp.where(x < warmup, x / warmup, jnp.maximum((x - 1.0) / (warmup - 1.0), 0.0))


def bertadam_schedule(lr: float, warmup: float, t_total: int) -> Callable[[jax.Array], jax.Array]:
  """count -> lr * warmup_linear(count / t_total); t_total <= 0 = constant lr (BertAdam's t_total = -1).

  `count` is the number of steps already taken, so the first step uses x = 0 and a multiplier of exactly 0
  (quirk 16: the first step of the original training never moves the weights)."""
  def schedule(count):
    if t_total <= 0:
      return jnp.asarray(lr, jnp.float32)
    return jnp.float32(lr) * warmup_linear(jnp.asarray(count, jnp.float32) / jnp.float32(t_total), warmup)
  return schedule


# GENERIC-OP: torch.nn.utils.clip_grad_norm_ applied to every tensor on its own (BertAdam's clipping).
def clip_by_tensor_norm_torch(max_norm: float, eps: float = 1e-6) -> optax.GradientTransformation:
  """Each leaf g <- g * min(1, max_norm / (||g||_2 + eps)), as `clip_grad_norm_(p, max_norm)` per parameter."""
  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params

    def clip(g):
      norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
      coef = jnp.minimum(jnp.float32(max_norm) / (norm + jnp.float32(eps)), 1.0)
      return (g * coef).astype(g.dtype)
    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


class BertAdamState(NamedTuple):
  """First and second moments (the repo's `next_m`, `next_v`), params-shaped."""
  mu: Any
  nu: Any


def scale_by_bertadam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6) -> optax.GradientTransformation:
  """m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2; update = m / (sqrt(v) + eps). No bias correction."""
  def init_fn(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return BertAdamState(mu=zeros, nu=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: m * b1 + g * (1 - b1), state.mu, updates)
    nu = jax.tree.map(lambda v, g: v * b2 + (1 - b2) * g * g, state.nu, updates)
    out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return out, BertAdamState(mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def bertadam(lr: float, warmup: float, t_total: int, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
             weight_decay: float = 0.01, max_grad_norm: float = 1.0,
             decay_lowercase_layernorm: bool = True) -> optax.GradientTransformation:
  """The repo's BertAdam as one optax chain (the step order of `BertAdam.step`, per parameter):
  per-tensor clip -> moments -> m/(sqrt v + eps) -> + wd p on decayed params -> times -lr warmup_linear(k / t_total).
  """
  return optax.chain(
      clip_by_tensor_norm_torch(max_grad_norm) if max_grad_norm > 0 else optax.identity(),
      scale_by_bertadam(b1, b2, eps),
      optax.add_decayed_weights(weight_decay, mask=lambda p: decay_mask(p, decay_lowercase_layernorm)),
      optax.scale_by_schedule(lambda count: -bertadam_schedule(lr, warmup, t_total)(count)),
  )


def adamw_alternative(lr: float, warmup: float, t_total: int, *, b1: float = 0.9, b2: float = 0.999,
                      eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0,
                      decay_lowercase_layernorm: bool = True) -> optax.GradientTransformation:
  """The quirk-16 alternative: global-norm clipping, bias-corrected Adam, decoupled decay, the same warmup-linear
  shape evaluated after the step (so the first step moves the weights)."""
  return optax.chain(
      shared_optim.clip_by_global_norm_torch(max_grad_norm) if max_grad_norm > 0 else optax.identity(),
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask=lambda p: decay_mask(p, decay_lowercase_layernorm)),
      optax.scale_by_schedule(lambda count: -bertadam_schedule(lr, warmup, t_total)(count + 1)),
  )


def make_optimizer(optim_cfg: Mapping[str, Any], quirks_cfg: Mapping[str, Any],
                   t_total: int) -> optax.GradientTransformation:
  """From `config.optim` (lr, warmup_proportion, weight_decay, b1, b2, eps, max_grad_norm) and `config.quirks`
  (optimizer 'bertadam_repo' | 'adamw', decay_lowercase_layernorm); t_total = total training steps."""
  kind = quirks_cfg.get('optimizer', 'bertadam_repo')
  builders = {'bertadam_repo': bertadam, 'adamw': adamw_alternative}
  if kind not in builders:
    raise ValueError(f'config.quirks.optimizer={kind!r}: expected one of {", ".join(builders)}')
  return builders[kind](
      float(optim_cfg['lr']), float(optim_cfg['warmup_proportion']), int(t_total), b1=float(optim_cfg['b1']),
      b2=float(optim_cfg['b2']), eps=float(optim_cfg['eps']), weight_decay=float(optim_cfg['weight_decay']),
      max_grad_norm=float(optim_cfg['max_grad_norm']),
      decay_lowercase_layernorm=bool(quirks_cfg.get('decay_lowercase_layernorm', True)))


def bertadam_moments(opt_state: Any) -> BertAdamState:
  """The (mu, nu) of the BertAdam link of an optimiser state (searched through chains / masks / wrappers)."""
  found = []

  def visit(node):
    if isinstance(node, BertAdamState):
      found.append(node)
    elif isinstance(node, optax.ScaleByAdamState):
      found.append(BertAdamState(mu=node.mu, nu=node.nu))
    elif isinstance(node, (tuple, list)):
      for child in node:
        visit(child)
    elif hasattr(node, '_fields'):
      for child in node:
        visit(child)
    elif isinstance(node, dict):
      for child in node.values():
        visit(child)
  visit(opt_state)
  if len(found) != 1:
    raise ValueError(f'expected one Adam state in the optimiser state, found {len(found)}')
  return found[0]
