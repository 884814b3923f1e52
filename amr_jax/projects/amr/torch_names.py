"""The one mapping between SooLab/AMR PyTorch `state_dict` names and the Flax `AMR` param pytree, both ways.

Works for parameters and for gradients (same names). Conversions: Linear weights are transposed, k=1 Conv1d weights
are squeezed and transposed, `in_proj_weight`/`in_proj_bias` are split into q/k/v (and re-fused on the way back).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from amr_jax.projects.amr.model import AMRModelConfig

FlaxPath = tuple[str, ...]

# Conversion kinds.
COPY = 'copy'                    # same array
LINEAR_WEIGHT = 'linear_weight'  # torch [out, in] <-> flax kernel [in, out]
CONV1D_K1_WEIGHT = 'conv1d_k1'   # torch [out, in, 1] <-> flax kernel [in, out]
IN_PROJ_WEIGHT = 'in_proj_weight'  # torch [3d, d] <-> flax q/k/v kernels [d, d]
IN_PROJ_BIAS = 'in_proj_bias'    # torch [3d] <-> flax q/k/v biases [d]

# Heads registered twice in the original (model level and inside transformer.decoder): alias -> canonical.
_ALIASED_HEADS = {
    'span_embed': ('layers.0', 'layers.1', 'layers.2'),
    'class_embed': ('',),
    'iou_head': ('',),
}


@dataclasses.dataclass(frozen=True)
class ParamEntry:
  """One PyTorch tensor and where it lives in the Flax tree.

  Attributes:
    torch_name: canonical PyTorch name (what `named_parameters()` yields).
    flax_paths: one path, or three (q, k, v) for the in-projection split.
    kind: conversion kind (module constants).
  """
  torch_name: str
  flax_paths: tuple[FlaxPath, ...]
  kind: str


def _linear(torch_prefix: str, flax_prefix: FlaxPath) -> list[ParamEntry]:
  return [ParamEntry(f'{torch_prefix}.weight', (flax_prefix + ('kernel',),), LINEAR_WEIGHT),
          ParamEntry(f'{torch_prefix}.bias', (flax_prefix + ('bias',),), COPY)]


def _conv1d_k1(torch_prefix: str, flax_prefix: FlaxPath) -> list[ParamEntry]:
  return [ParamEntry(f'{torch_prefix}.weight', (flax_prefix + ('kernel',),), CONV1D_K1_WEIGHT),
          ParamEntry(f'{torch_prefix}.bias', (flax_prefix + ('bias',),), COPY)]


def _layer_norm(torch_prefix: str, flax_prefix: FlaxPath) -> list[ParamEntry]:
  return [ParamEntry(f'{torch_prefix}.weight', (flax_prefix + ('scale',),), COPY),
          ParamEntry(f'{torch_prefix}.bias', (flax_prefix + ('bias',),), COPY)]


def _mlp(torch_prefix: str, flax_prefix: FlaxPath, num_layers: int) -> list[ParamEntry]:
  entries = []
  for i in range(num_layers):
    entries += _linear(f'{torch_prefix}.layers.{i}', flax_prefix + (f'layers_{i}',))
  return entries


def _prelu(torch_prefix: str, flax_prefix: FlaxPath) -> list[ParamEntry]:
  return [ParamEntry(f'{torch_prefix}.weight', (flax_prefix + ('weight',),), COPY)]


def _torch_mha(torch_prefix: str, flax_prefix: FlaxPath) -> list[ParamEntry]:
  qkv = tuple(flax_prefix + (name,) for name in ('q_proj', 'k_proj', 'v_proj'))
  return [ParamEntry(f'{torch_prefix}.in_proj_weight', tuple(p + ('kernel',) for p in qkv), IN_PROJ_WEIGHT),
          ParamEntry(f'{torch_prefix}.in_proj_bias', tuple(p + ('bias',) for p in qkv), IN_PROJ_BIAS),
          *_linear(f'{torch_prefix}.out_proj', flax_prefix + ('out_proj',))]


def _encoder_layer(torch_prefix: str, flax_prefix: FlaxPath) -> list[ParamEntry]:
  """A T2V or encoder layer (same parameter set)."""
  return [*_torch_mha(f'{torch_prefix}.self_attn', flax_prefix + ('self_attn',)),
          *_linear(f'{torch_prefix}.linear1', flax_prefix + ('linear1',)),
          *_linear(f'{torch_prefix}.linear2', flax_prefix + ('linear2',)),
          *_layer_norm(f'{torch_prefix}.norm1', flax_prefix + ('norm1',)),
          *_layer_norm(f'{torch_prefix}.norm2', flax_prefix + ('norm2',)),
          *_prelu(f'{torch_prefix}.activation', flax_prefix + ('activation',))]


def _decoder_layer(torch_prefix: str, flax_prefix: FlaxPath, is_first: bool, distill: bool) -> list[ParamEntry]:
  entries = []
  for name in ('sa_qcontent_proj', 'sa_qpos_proj', 'sa_kcontent_proj', 'sa_kpos_proj', 'sa_v_proj'):
    entries += _linear(f'{torch_prefix}.{name}', flax_prefix + (name,))
  entries += _linear(f'{torch_prefix}.self_attn.out_proj', flax_prefix + ('self_attn', 'out_proj'))
  entries += _layer_norm(f'{torch_prefix}.norm1', flax_prefix + ('norm1',))
  ca_names = ['ca_qcontent_proj'] + (['ca_qpos_proj'] if is_first else []) + [
      'ca_kcontent_proj', 'ca_kpos_proj', 'ca_v_proj', 'ca_qpos_sine_proj']
  for name in ca_names:
    entries += _linear(f'{torch_prefix}.{name}', flax_prefix + (name,))
  entries += _linear(f'{torch_prefix}.cross_attn.out_proj', flax_prefix + ('cross_attn', 'out_proj'))
  ffn_names = ['linear1', 'linear2'] + (['linear1_active', 'linear2_active'] if distill else [])
  for name in ffn_names:
    entries += _linear(f'{torch_prefix}.{name}', flax_prefix + (name,))
  entries += _layer_norm(f'{torch_prefix}.norm2', flax_prefix + ('norm2',))
  entries += _layer_norm(f'{torch_prefix}.norm3', flax_prefix + ('norm3',))
  entries += _prelu(f'{torch_prefix}.activation', flax_prefix + ('activation',))
  return entries


def param_table(cfg: AMRModelConfig) -> list[ParamEntry]:
  """Every canonical PyTorch parameter of the AMR model described by `cfg`, with its Flax location."""
  t: list[ParamEntry] = [ParamEntry('logit_scale', (('logit_scale',),), COPY)]
  for i in range(cfg.t2v_layers):
    t += _encoder_layer(f'transformer.t2v_encoder.layers.{i}', ('transformer', 't2v_encoder', f'layers_{i}'))
  for i in range(cfg.enc_layers):
    t += _encoder_layer(f'transformer.encoder.layers.{i}', ('transformer', 'encoder', f'layers_{i}'))
  dec = ('transformer', 'decoder')
  for i in range(cfg.dec_layers):
    t += _decoder_layer(f'transformer.decoder.layers.{i}', dec + (f'layers_{i}',), is_first=i == 0,
                        distill=cfg.is_distill)
  t += _layer_norm('transformer.decoder.norm', dec + ('norm',))
  t += _mlp('transformer.decoder.query_scale', dec + ('query_scale',), 2)
  t += _mlp('transformer.decoder.ref_point_head', dec + ('ref_point_head',), 2)
  t += _mlp('transformer.decoder.bbox_embed', dec + ('bbox_embed',), 3)
  t += _mlp('transformer.decoder.ref_anchor_head', dec + ('ref_anchor_head',), 2)
  # Model-level heads; canonical names are the transformer.decoder.* spelling (see ALIASES).
  t += _mlp('transformer.decoder.span_embed', ('span_embed',), 3)
  t += _linear('transformer.decoder.class_embed', ('class_embed',))
  t += _linear('transformer.decoder.iou_head', ('iou_head',))
  t += [ParamEntry('txt_position_embed.position_embeddings.weight',
                   (('txt_position_embed', 'position_embeddings'),), COPY)]
  t += _layer_norm('txt_position_embed.LayerNorm', ('txt_position_embed', 'LayerNorm'))
  t += [ParamEntry('query_embed.weight', (('query_embed',),), COPY)]
  if cfg.is_distill:
    t += [ParamEntry('new_query_embed.weight', (('new_query_embed',),), COPY)]
  for side in ('txt', 'vid'):
    for i in range(cfg.n_input_proj):
      t += _layer_norm(f'input_{side}_proj.{i}.LayerNorm', (f'input_{side}_proj', f'layers_{i}', 'LayerNorm'))
      t += _linear(f'input_{side}_proj.{i}.net.1', (f'input_{side}_proj', f'layers_{i}', 'linear'))
  t += _linear('saliency_proj1', ('saliency_proj1',))
  cq_att = ('fuser', 'cq_attention')
  t += [ParamEntry('fuser.cq_attention.w4C', (cq_att + ('w4C',),), COPY),
        ParamEntry('fuser.cq_attention.w4Q', (cq_att + ('w4Q',),), COPY),
        ParamEntry('fuser.cq_attention.w4mlu', (cq_att + ('w4mlu',),), COPY)]
  t += _conv1d_k1('fuser.cq_attention.cqa_linear.conv1d', cq_att + ('cqa_linear',))
  t += [ParamEntry('fuser.cq_concat.weighted_pool.weight', (('fuser', 'cq_concat', 'weighted_pool'),), COPY)]
  t += _conv1d_k1('fuser.cq_concat.conv1d.conv1d', ('fuser', 'cq_concat', 'conv1d'))
  t += _mlp('mask_head', ('mask_head',), 3)
  return t


def aliases() -> dict[str, str]:
  """Alias `state_dict` name -> canonical name (the heads registered twice in the original)."""
  out = {}
  for head, subs in _ALIASED_HEADS.items():
    for sub in subs:
      prefix = f'{head}.{sub}' if sub else head
      for leaf in ('weight', 'bias'):
        out[f'{prefix}.{leaf}'] = f'transformer.decoder.{prefix}.{leaf}'
  return out


def torch_names(cfg: AMRModelConfig, include_aliases: bool = False) -> list[str]:
  """Canonical PyTorch names (plus the aliases when asked), in table order."""
  names = [e.torch_name for e in param_table(cfg)]
  if include_aliases:
    names += list(aliases())
  return names


def _unwrap(params: Mapping[str, Any]) -> Mapping[str, Any]:
  """Accepts either a params tree or a `{'params': tree}` variables dict."""
  if set(params.keys()) == {'params'}:
    return params['params']
  return params


def _get(tree: Mapping[str, Any], path: FlaxPath) -> np.ndarray:
  node: Any = tree
  for key in path:
    node = node[key]
  return np.asarray(node)


def _set(tree: dict[str, Any], path: FlaxPath, value: np.ndarray) -> None:
  node = tree
  for key in path[:-1]:
    node = node.setdefault(key, {})
  node[path[-1]] = value


def _lookup(state_dict: Mapping[str, Any], name: str, alias_of: Mapping[str, str]) -> Optional[np.ndarray]:
  """The tensor for canonical `name`, from the canonical key or its alias; both present must agree."""
  aliases_of_name = [a for a, c in alias_of.items() if c == name]
  candidates = [k for k in [name, *aliases_of_name] if k in state_dict]
  if not candidates:
    return None
  value = np.asarray(state_dict[candidates[0]])
  for other in candidates[1:]:
    if not np.array_equal(value, np.asarray(state_dict[other])):
      raise ValueError(f'{other!r} and {candidates[0]!r} are the same PyTorch tensor but differ here')
  return value


def torch_to_flax(state_dict: Mapping[str, Any], cfg: AMRModelConfig, strict: bool = True) -> dict[str, Any]:
  """PyTorch-named arrays (params or grads; aliases optional) -> the Flax `AMR` params tree (numpy leaves).

  Args:
    state_dict: name -> array (a `state_dict`, an npz, a grads dict).
    cfg: the model config (layer counts, stage, hidden size).
    strict: raise on missing canonical tensors and on names the table does not know.

  Returns:
    The params tree (without the 'params' wrapper), leaves as numpy arrays with the input dtype.
  """
  alias_of = aliases()
  table = param_table(cfg)
  if strict:
    known = {e.torch_name for e in table} | set(alias_of)
    unknown = sorted(set(state_dict) - known)
    if unknown:
      raise KeyError(f'unexpected PyTorch names for stage {cfg.stage!r}: {unknown[:10]} ({len(unknown)} total)')
  tree: dict[str, Any] = {}
  missing = []
  for entry in table:
    value = _lookup(state_dict, entry.torch_name, alias_of)
    if value is None:
      missing.append(entry.torch_name)
      continue
    for path, flax_value in zip(entry.flax_paths, _to_flax(value, entry.kind, len(entry.flax_paths))):
      _set(tree, path, flax_value)
  if missing and strict:
    raise KeyError(f'missing PyTorch names for stage {cfg.stage!r}: {missing[:10]} ({len(missing)} total)')
  return tree


def flax_to_torch(params: Mapping[str, Any], cfg: AMRModelConfig,
                  include_aliases: bool = False) -> dict[str, np.ndarray]:
  """The Flax `AMR` params (or grads) tree -> canonical PyTorch names (plus aliases when asked), numpy arrays."""
  tree = _unwrap(params)
  out: dict[str, np.ndarray] = {}
  for entry in param_table(cfg):
    values = [_get(tree, path) for path in entry.flax_paths]
    out[entry.torch_name] = _to_torch(values, entry.kind)
  if include_aliases:
    for alias, canonical in aliases().items():
      out[alias] = out[canonical]
  return out


def _to_flax(value: np.ndarray, kind: str, num_paths: int) -> list[np.ndarray]:
  if kind == COPY:
    return [value]
  if kind == LINEAR_WEIGHT:
    return [np.ascontiguousarray(value.T)]
  if kind == CONV1D_K1_WEIGHT:
    if value.ndim != 3 or value.shape[2] != 1:
      raise ValueError(f'expected a k=1 Conv1d weight [out, in, 1], got {value.shape}')
    return [np.ascontiguousarray(value[:, :, 0].T)]
  if kind in (IN_PROJ_WEIGHT, IN_PROJ_BIAS):
    parts = np.split(value, num_paths, axis=0)
    return [np.ascontiguousarray(p.T) if kind == IN_PROJ_WEIGHT else p for p in parts]
  raise ValueError(f'unknown conversion kind {kind!r}')


def _to_torch(values: Iterable[np.ndarray], kind: str) -> np.ndarray:
  values = list(values)
  if kind == COPY:
    return values[0]
  if kind == LINEAR_WEIGHT:
    return np.ascontiguousarray(values[0].T)
  if kind == CONV1D_K1_WEIGHT:
    return np.ascontiguousarray(values[0].T[:, :, None])
  if kind == IN_PROJ_WEIGHT:
    return np.concatenate([v.T for v in values], axis=0)
  if kind == IN_PROJ_BIAS:
    return np.concatenate(values, axis=0)
  raise ValueError(f'unknown conversion kind {kind!r}')
