"""PyTorch CPL state_dict names <-> Flax parameter paths of `amr_jax.projects.cpl.model.CPL`.

Params and gradients alike: Linear / in_proj weights transposed, decoder layer i = row i of the scanned stack.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from amr_jax.projects.cpl.model import CPLModelConfig

IDENTITY = 'identity'   # vectors, biases, LayerNorm
LINEAR = 'linear'       # torch (out, in) <-> flax (in, out)

NameEntry = Tuple[str, Tuple[str, ...], str, Optional[int]]   # (torch name, flax path, layout, layer index)


def _linear(torch_prefix: str, flax_path: Tuple[str, ...], layer: Optional[int] = None) -> List[NameEntry]:
  return [(f'{torch_prefix}.weight', flax_path + ('kernel',), LINEAR, layer),
          (f'{torch_prefix}.bias', flax_path + ('bias',), IDENTITY, layer)]


def _layer_norm(torch_prefix: str, flax_path: Tuple[str, ...], layer: int) -> List[NameEntry]:
  return [(f'{torch_prefix}.weight', flax_path + ('scale',), IDENTITY, layer),
          (f'{torch_prefix}.bias', flax_path + ('bias',), IDENTITY, layer)]


def _attention(torch_prefix: str, flax_path: Tuple[str, ...], layer: int) -> List[NameEntry]:
  return ([(f'{torch_prefix}.in_proj_weight', flax_path + ('in_proj_kernel',), LINEAR, layer),
           (f'{torch_prefix}.in_proj_bias', flax_path + ('in_proj_bias',), IDENTITY, layer)]
          + _linear(f'{torch_prefix}.out_proj', flax_path + ('out_proj',), layer))


def cpl_name_table(config: CPLModelConfig) -> List[NameEntry]:
  """(torch state_dict name, flax path, layout) for every parameter, in the torch `named_parameters()` order."""
  rows: List[NameEntry] = [('mask_vec', ('mask_vec',), IDENTITY, None), ('start_vec', ('start_vec',), IDENTITY, None),
                           ('pred_vec', ('pred_vec',), IDENTITY, None)]
  rows += _linear('frame_fc', ('frame_fc',)) + _linear('word_fc', ('word_fc',))
  for decoder, num_layers in (('decoder1', config.num_layers1), ('decoder2', config.num_layers2)):
    for i in range(num_layers):
      t, f = f'trans.{decoder}.decoder_layers.{i}', (decoder, 'layers')
      rows += _attention(f'{t}.self_attn', f + ('self_attn',), i)
      rows += _layer_norm(f'{t}.self_attn_layer_norm', f + ('self_attn_layer_norm',), i)
      rows += _attention(f'{t}.encoder_attn', f + ('encoder_attn',), i)
      rows += _layer_norm(f'{t}.encoder_attn_layer_norm', f + ('encoder_attn_layer_norm',), i)
      rows += _linear(f'{t}.fc1', f + ('fc1',), i) + _linear(f'{t}.fc2', f + ('fc2',), i)
      rows += _layer_norm(f'{t}.final_layer_norm', f + ('final_layer_norm',), i)
  rows += _linear('fc_comp', ('fc_comp',)) + _linear('fc_gauss', ('fc_gauss',))
  return rows


def _to_flax(value: np.ndarray, kind: str) -> np.ndarray:
  value = np.asarray(value, np.float32)
  return np.ascontiguousarray(value.T) if kind == LINEAR else value


def torch_to_flax(state_dict: Mapping[str, Any], config: CPLModelConfig) -> Dict[str, Any]:
  """Flax params pytree from a torch state_dict (numpy arrays); raises one error naming every problem."""
  table = cpl_name_table(config)
  known = {row[0] for row in table}
  missing = [name for name in known if name not in state_dict]
  unexpected = [name for name in state_dict if name not in known]
  if missing or unexpected:
    raise ValueError(f'CPL state_dict does not match the config: missing {sorted(missing)[:8]}'
                     f' ({len(missing)}), unexpected {sorted(unexpected)[:8]} ({len(unexpected)})')
  leaves: Dict[Tuple[str, ...], Any] = {}
  for name, path, kind, layer in table:
    value = _to_flax(state_dict[name], kind)
    if layer is None:
      leaves[path] = value
    else:
      leaves.setdefault(path, {})[layer] = value
  params: Dict[str, Any] = {}
  for path, value in leaves.items():
    if isinstance(value, dict):
      value = np.stack([value[i] for i in range(len(value))])
    node = params
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return params


def flax_to_torch(params: Mapping[str, Any], config: CPLModelConfig) -> Dict[str, np.ndarray]:
  """torch-named numpy arrays (torch layouts) from a Flax params (or gradients) pytree."""
  out = {}
  for name, path, kind, layer in cpl_name_table(config):
    node = params
    for part in path:
      node = node[part]
    value = np.asarray(node) if layer is None else np.asarray(node)[layer]
    out[name] = np.ascontiguousarray(value.T) if kind == LINEAR else value
  return out
