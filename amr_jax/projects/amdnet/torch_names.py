"""PyTorch state_dict names of the AMDNet repo (`GMMFormer_Net`) <-> Flax param paths of `model.AMDNet`.

Works for params, gradients and optimiser moments (same layout); Linear weights are transposed.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

IDENTITY = 'identity'   # vectors and the position table
LINEAR = 'linear'       # torch [out, in] <-> flax kernel [in, out]

NameEntry = Tuple[str, Tuple[str, ...], str]


def _linear(torch_prefix: str, flax_path: Tuple[str, ...]) -> List[NameEntry]:
  return [(f'{torch_prefix}.weight', flax_path + ('kernel',), LINEAR),
          (f'{torch_prefix}.bias', flax_path + ('bias',), IDENTITY)]


def _layer_norm(torch_prefix: str, flax_path: Tuple[str, ...]) -> List[NameEntry]:
  return [(f'{torch_prefix}.weight', flax_path + ('scale',), IDENTITY),
          (f'{torch_prefix}.bias', flax_path + ('bias',), IDENTITY)]


def _linear_layer(torch_prefix: str, flax_name: str) -> List[NameEntry]:
  """The repo's LinearLayer (`LayerNorm`, `net` = [Dropout, Linear]) <-> `layers.LinearLayer`."""
  return _layer_norm(f'{torch_prefix}.LayerNorm', (flax_name, 'LayerNorm')) + _linear(
      f'{torch_prefix}.net.1', (flax_name, 'linear'))


def _bert_attention(torch_prefix: str, flax_path: Tuple[str, ...]) -> List[NameEntry]:
  rows: List[NameEntry] = []
  for proj in ('query', 'key', 'value'):
    rows += _linear(f'{torch_prefix}.self.{proj}', flax_path + ('self', proj))
  rows += _linear(f'{torch_prefix}.output.dense', flax_path + ('output', 'dense'))
  rows += _layer_norm(f'{torch_prefix}.output.LayerNorm', flax_path + ('output', 'LayerNorm'))
  return rows


def name_table() -> List[NameEntry]:
  """(torch name, flax path, layout) for every parameter, in the repo's `named_parameters()` order."""
  rows: List[NameEntry] = [('clip_pos_embed.position_embeddings.weight', ('clip_pos_embed', 'position_embeddings'),
                            IDENTITY)]
  rows += _layer_norm('clip_pos_embed.LayerNorm', ('clip_pos_embed', 'LayerNorm'))
  rows += _linear_layer('query_input_proj', 'query_input_proj')
  rows += _linear_layer('clip_input_proj', 'clip_input_proj')
  rows += _bert_attention('clip_encoder.attn0', ('clip_encoder', 'attn0'))
  rows += _bert_attention('clip_encoder.attn1', ('clip_encoder', 'attn1'))
  rows += _layer_norm('clip_encoder.clip2video.layernorm', ('clip_encoder', 'clip2video', 'layernorm'))
  rows += _linear('clip_encoder.clip2video.fc_out1', ('clip_encoder', 'clip2video', 'fc_out1'))
  rows += _linear('clip_encoder.fc_gauss', ('clip_encoder', 'fc_gauss'))
  return rows


def flax_path_to_torch() -> Dict[Tuple[str, ...], str]:
  return {path: name for name, path, _ in name_table()}


def _get(tree: Mapping[str, Any], path: Tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def torch_to_flax(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """PyTorch-named arrays -> the nested Flax params dict (float32 numpy). Raises one ValueError naming every
  missing or unexpected name."""
  table = name_table()
  names = {name for name, _, _ in table}
  missing = [name for name in names if name not in state_dict]
  unexpected = [name for name in state_dict if name not in names]
  if missing or unexpected:
    raise ValueError(f'AMDNet state_dict: missing {sorted(missing)}; unexpected {sorted(unexpected)}')
  tree: Dict[str, Any] = {}
  for name, path, kind in table:
    value = np.asarray(state_dict[name], np.float32)
    if kind == LINEAR:
      value = value.T
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.ascontiguousarray(value)
  return tree


def flax_to_torch(tree: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Nested Flax params (or grads / moments with the same structure) -> PyTorch-named numpy arrays."""
  out: Dict[str, np.ndarray] = {}
  for name, path, kind in name_table():
    value = np.asarray(_get(tree, path))
    out[name] = value.T if kind == LINEAR else value
  return out
