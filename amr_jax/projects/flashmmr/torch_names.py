"""PyTorch state_dict names ↔ Flax parameter pytree for FlashMMR / FlashVTG and the PV verifier.

Works for parameters and for gradients (same layout); every entry carries the layout transform it needs.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from amr_jax.projects.flashmmr.model import FlashMMRModelConfig

# Layout kinds: how a torch tensor maps onto the Flax leaf.
IDENTITY = "identity"  # vectors, embeddings, scalars
LINEAR = "linear"  # torch (out, in) ↔ flax (in, out)
CONV1D = "conv1d"  # torch (out, in, k) ↔ flax (k, in, out)
CONV2D_1XK = "conv2d_1xk"  # torch (out, in, 1, k) ↔ flax (k, in, out)

NameEntry = Tuple[str, Tuple[str, ...], str]


def _linear(torch_prefix: str, flax_path: Tuple[str, ...], bias: bool = True) -> List[NameEntry]:
  rows = [(f"{torch_prefix}.weight", flax_path + ("kernel",), LINEAR)]
  if bias:
    rows.append((f"{torch_prefix}.bias", flax_path + ("bias",), IDENTITY))
  return rows


def _layer_norm(torch_prefix: str, flax_path: Tuple[str, ...]) -> List[NameEntry]:
  return [(f"{torch_prefix}.weight", flax_path + ("scale",), IDENTITY),
          (f"{torch_prefix}.bias", flax_path + ("bias",), IDENTITY)]


def _encoder_layer(torch_prefix: str, flax_name: str, packed_attention: bool) -> List[NameEntry]:
  p = (flax_name,)
  rows: List[NameEntry] = []
  if packed_attention:
    rows += [(f"{torch_prefix}.self_attn.in_proj_weight", p + ("self_attn", "in_proj_kernel"), LINEAR),
             (f"{torch_prefix}.self_attn.in_proj_bias", p + ("self_attn", "in_proj_bias"), IDENTITY)]
    rows += _linear(f"{torch_prefix}.self_attn.out_proj", p + ("self_attn", "out_proj"))
  else:
    rows += _linear(f"{torch_prefix}.self_attn.out_proj", p + ("out_proj",))
  rows += _linear(f"{torch_prefix}.linear1", p + ("ffn", "linear1"))
  rows += _linear(f"{torch_prefix}.linear2", p + ("ffn", "linear2"))
  rows += _layer_norm(f"{torch_prefix}.norm1", p + ("norm1",))
  rows += _layer_norm(f"{torch_prefix}.norm2", p + ("norm2",))
  rows.append((f"{torch_prefix}.activation.weight", p + ("ffn", "prelu_slope"), IDENTITY))
  return rows


def _scorer(torch_prefix: str, flax_name: str, config: FlashMMRModelConfig) -> List[NameEntry]:
  rows: List[NameEntry] = []
  for i in range(config.num_conv_layers):
    rows += [(f"{torch_prefix}.convs.{i}.weight", (flax_name, f"conv_{i}", "kernel"), CONV2D_1XK),
             (f"{torch_prefix}.convs.{i}.bias", (flax_name, f"conv_{i}", "bias"), IDENTITY)]
  for j in range(config.num_mlp_layers):
    rows += _linear(f"{torch_prefix}.fc.layers.{j}", (flax_name, f"mlp_{j}"))
  return rows


def flashmmr_name_table(config: FlashMMRModelConfig, include_pooling: bool = True) -> List[NameEntry]:
  """(torch state_dict name, flax path, layout kind) for every parameter, in torch `named_parameters()` order.

  Args:
    config: model config (number of layers / levels / convs).
    include_pooling: FlashVTG has `pooling.att.weight` (AdaPooling); the inference-only FlashMMR model lacks it.

  Returns:
    list of entries.
  """
  rows: List[NameEntry] = [
      ("dummy_rep_token", ("dummy_tokens",), IDENTITY),
      ("dummy_rep_pos", ("dummy_positions",), IDENTITY),
      ("coef", ("coef",), IDENTITY),
      ("x", ("mix_x",), IDENTITY),
  ]
  for i in range(config.t2v_layers):
    rows += _encoder_layer(f"transformer.t2v_encoder.layers.{i}", f"t2v_layer_{i}", packed_attention=False)
  for i in range(config.enc_layers):
    rows += _encoder_layer(f"transformer.encoder.layers.{i}", f"video_encoder_layer_{i}", packed_attention=True)
  rows += [("txt_position_embed.position_embeddings.weight", ("text_position_table",), IDENTITY),
           ("txt_position_embed.LayerNorm.weight", ("text_position_norm_scale",), IDENTITY),
           ("txt_position_embed.LayerNorm.bias", ("text_position_norm_bias",), IDENTITY)]
  rows += _linear("saliency_proj1", ("saliency_proj1",))
  rows += _linear("saliency_proj2", ("saliency_proj2",))
  for modality, flax_prefix in (("txt", "text_input_proj"), ("vid", "video_input_proj")):
    for i in range(config.n_input_proj):
      rows += _layer_norm(f"input_{modality}_proj.{i}.LayerNorm", (f"{flax_prefix}_{i}", "layer_norm"))
      rows += _linear(f"input_{modality}_proj.{i}.net.1", (f"{flax_prefix}_{i}", "linear"))
  rows.append(("token_type_embeddings.weight", ("token_type_embeddings",), IDENTITY))
  for i in range(config.dummy_layers):
    rows += _encoder_layer(f"txtproj_encoder.layers.{i}", f"dummy_encoder_layer_{i}", packed_attention=True)
  for level, stride in enumerate(config.strides):
    depth = int(round(math.log2(stride)))
    for j in range(depth):
      rows += [(f"pyramid.blocks.{level}.{5 * j + 1}.weight", (f"pyramid_level_{level}_conv_{j}", "kernel"), CONV1D),
               (f"pyramid.blocks.{level}.{5 * j + 1}.bias", (f"pyramid_level_{level}_conv_{j}", "bias"), IDENTITY)]
      rows += _layer_norm(f"pyramid.blocks.{level}.{5 * j + 3}", (f"pyramid_level_{level}_norm_{j}",))
  if include_pooling:
    rows.append(("pooling.att.weight", ("query_pooling", "kernel"), LINEAR))
  rows += _scorer("conf_head", "inter_scorer", config)
  rows += _scorer("class_head", "intra_scorer", config)
  rows += [("coord_head.module.1.weight", ("coord_head", "conv_0", "kernel"), CONV1D),
           ("coord_head.module.1.bias", ("coord_head", "conv_0", "bias"), IDENTITY),
           ("coord_head.module.3.weight", ("coord_head", "conv_1", "kernel"), CONV1D),
           ("coord_head.module.3.bias", ("coord_head", "conv_1", "bias"), IDENTITY)]
  return rows


def torch_to_flax_leaf(value: np.ndarray, kind: str) -> np.ndarray:
  value = np.asarray(value)
  if kind == IDENTITY:
    return value
  if kind == LINEAR:
    return value.T
  if kind == CONV1D:
    return value.transpose(2, 1, 0)
  if kind == CONV2D_1XK:
    return value[:, :, 0, :].transpose(2, 1, 0)
  raise ValueError(kind)


def flax_to_torch_leaf(value: np.ndarray, kind: str) -> np.ndarray:
  value = np.asarray(value)
  if kind == IDENTITY:
    return value
  if kind == LINEAR:
    return value.T
  if kind == CONV1D:
    return value.transpose(2, 1, 0)
  if kind == CONV2D_1XK:
    return value.transpose(2, 1, 0)[:, :, None, :]
  raise ValueError(kind)


def _set_path(tree: Dict[str, Any], path: Tuple[str, ...], value: Any) -> None:
  node = tree
  for key in path[:-1]:
    node = node.setdefault(key, {})
  node[path[-1]] = value


def _get_path(tree: Mapping[str, Any], path: Tuple[str, ...]) -> Any:
  node = tree
  for key in path:
    node = node[key]
  return node


def _flatten_paths(tree: Mapping[str, Any], prefix: Tuple[str, ...] = ()) -> List[Tuple[str, ...]]:
  paths = []
  for key, value in tree.items():
    if isinstance(value, Mapping):
      paths += _flatten_paths(value, prefix + (key,))
    else:
      paths.append(prefix + (key,))
  return paths


def _convert_to_flax(state: Mapping[str, np.ndarray], table: List[NameEntry], strict: bool) -> Dict[str, Any]:
  known = {name for name, _, _ in table}
  unexpected = sorted(set(state) - known)
  missing = sorted(known - set(state))
  if strict and (unexpected or missing):
    raise KeyError(f"state_dict mismatch: missing={missing} unexpected={unexpected}")
  tree: Dict[str, Any] = {}
  for name, path, kind in table:
    if name in state:
      _set_path(tree, path, np.array(torch_to_flax_leaf(state[name], kind), dtype=np.float32, order="C"))
  return tree


def _convert_to_torch(tree: Mapping[str, Any], table: List[NameEntry], strict: bool) -> Dict[str, np.ndarray]:
  table_paths = {path for _, path, _ in table}
  extra = sorted("/".join(p) for p in set(_flatten_paths(tree)) - table_paths)
  if strict and extra:
    raise KeyError(f"flax leaves without a torch name: {extra}")
  out: Dict[str, np.ndarray] = {}
  for name, path, kind in table:
    try:
      leaf = _get_path(tree, path)
    except KeyError:
      if strict:
        raise
      continue
    out[name] = np.array(flax_to_torch_leaf(np.asarray(leaf), kind), order="C")
  return out


def flashmmr_torch_to_flax(state: Mapping[str, np.ndarray], config: FlashMMRModelConfig,
                           strict: bool = True) -> Dict[str, Any]:
  """torch state_dict (or grads with the same names) → Flax `params` tree (plain nested dicts of numpy)."""
  include_pooling = "pooling.att.weight" in state or strict
  return _convert_to_flax(state, flashmmr_name_table(config, include_pooling), strict)


def flashmmr_flax_to_torch(tree: Mapping[str, Any], config: FlashMMRModelConfig,
                           strict: bool = True) -> Dict[str, np.ndarray]:
  """Flax `params` (or grads) tree → torch state_dict names and layouts."""
  return _convert_to_torch(tree, flashmmr_name_table(config), strict)


# ----------------------------------------------------------------------------------------------------------------
# Post-verification GRU (`FlashMMR/post_verification.py: PostVerificationRNN`).


def verifier_name_table(num_classifier_layers: int = 3) -> List[NameEntry]:
  """torch names of `PostVerificationRNN` (1-layer GRU + Sequential classifier at indices 0, 3, 6)."""
  rows: List[NameEntry] = [
      ("rnn.weight_ih_l0", ("gru", "input_kernel"), LINEAR),
      ("rnn.weight_hh_l0", ("gru", "hidden_kernel"), LINEAR),
      ("rnn.bias_ih_l0", ("gru", "input_bias"), IDENTITY),
      ("rnn.bias_hh_l0", ("gru", "hidden_bias"), IDENTITY),
  ]
  for j in range(num_classifier_layers):
    rows += _linear(f"classifier.{3 * j}", (f"classifier_{j}",))
  return rows


def verifier_torch_to_flax(state: Mapping[str, np.ndarray], strict: bool = True) -> Dict[str, Any]:
  """`PostVerificationRNN` state_dict (optionally with a `param.`/`grad.` prefix stripped) → Flax tree."""
  return _convert_to_flax(state, verifier_name_table(), strict)


def verifier_flax_to_torch(tree: Mapping[str, Any], strict: bool = True) -> Dict[str, np.ndarray]:
  return _convert_to_torch(tree, verifier_name_table(), strict)
