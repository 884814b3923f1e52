"""FlashMMR network (= FlashVTG base, NeurIPS 2025 / WACV 2025) in Flax linen, exact to the PyTorch reference.

Dummy-token text encoder, ACA, video encoder, conv pyramid, scorers and coord head; quirk flags = reference.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.ops import layers

Array = jax.Array

LAYER_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class FlashMMRModelConfig:
  """Every dimension and switch of the FlashMMR / FlashVTG network.

  Defaults are the QVHighlights training-script values (`train_qv_slowclip.sh`). The `*quirk*`-style booleans
  reproduce behaviours of the reference code (fixture README §9); each defaults to the reference behaviour.

  Attributes:
    video_feature_dim: raw video feature size incl. TEF (SlowFast 2304 + CLIP 512 + TEF 2).
    text_feature_dim: raw text token feature size.
    hidden_dim: model width d.
    num_heads: heads of the ACA and the video encoder.
    dim_feedforward: FFN width of every transformer layer.
    num_dummies: learnable dummy tokens prepended to the text.
    t2v_layers: ACA (text-to-video) layers.
    enc_layers: video self-attention layers.
    dummy_layers: layers of the dummy/text encoder.
    dummy_encoder_num_heads: heads of the dummy/text encoder (hard-coded 8 in the reference).
    n_input_proj: LinearLayers per input projection (ReLU on all but the last).
    input_dropout: dropout before each input-projection Linear.
    dropout: attention / FFN / DropPath rate of the transformer layers.
    max_q_l: rows of the (unused by default) trainable text position table.
    use_txt_pos: add the trainable text position embedding (off in the reference scripts).
    kernel_size: temporal kernel of the confidence-scorer convs.
    num_conv_layers: convs per confidence scorer.
    num_mlp_layers: MLP layers per confidence scorer (hidden = scorer_channels // 2).
    scorer_channels: conv width of the confidence scorers (None = hidden_dim; the repo hard-codes 256).
    coord_kernel_size: kernel of the two coordinate-head convs.
    strides: pyramid strides (powers of two; 1 = the plain ReLU level).
    buffer_size: anchor-point buffer per level (max points a level may have).
    max_num_moment: top-k windows kept at inference.
    clip_length: seconds per feature clip.
    init_mix_x: initial value of the learnable intra/inter mixing scalar x.
    init_coef: initial value of the per-level coordinate scale.
    pyramid_input_inplace_relu: §9.1 the stride-1 in-place ReLU also feeds the stride-2/4/8 stacks and
      `video_emb` (False: they receive the encoder output F; video_emb = F).
    t2v_misaligned_extra_mask: §9.2 the ACA extra mask is tiled `.repeat(nhead)` so sample b, head h uses the
      mask of row (b·H+h) mod B (False: each sample uses its own mask).
    saliency_mean_includes_padding: §9.3 `memory_global` averages all L positions, padding included (False:
      masked mean over valid clips).
    pyramid_sees_padding: §9.3 pyramid/heads run on the garbage features at padded clips (False: F is zeroed at
      padded clips before the pyramid).
    rank_padded_points: §9.3 `pred_spans` ranks padded points too (False: padded points are ranked last).
    inter_conf_crosses_levels: §9.4 the inter scorer's conv runs over the concatenation of all levels (False: it
      runs per level, so no cross-level mixing).
    t2v_drop_dummy_values: §9.5 ACA output uses only the text values; dummies absorb probability but give no
      value (False: the dummy values are used too, the repo's `dummy=False` path).
    mix_logits_before_sigmoid: §9.7 `x·c_intra + (1−x)·c_inter` mixes logits (False: mixes probabilities and
      returns the logit of the mix, so downstream code is unchanged).
  """
  video_feature_dim: int = 2818
  text_feature_dim: int = 512
  hidden_dim: int = 256
  num_heads: int = 8
  dim_feedforward: int = 1024
  num_dummies: int = 40
  t2v_layers: int = 6
  enc_layers: int = 3
  dummy_layers: int = 2
  dummy_encoder_num_heads: int = 8
  n_input_proj: int = 2
  input_dropout: float = 0.5
  dropout: float = 0.1
  max_q_l: int = 40
  use_txt_pos: bool = False
  kernel_size: int = 5
  num_conv_layers: int = 1
  num_mlp_layers: int = 5
  scorer_channels: Optional[int] = None
  coord_kernel_size: int = 3
  strides: Tuple[int, ...] = (1, 2, 4, 8)
  buffer_size: int = 1024
  max_num_moment: int = 50
  clip_length: float = 2.0
  init_mix_x: float = 0.5
  init_coef: float = 1.0
  # Reference quirks (fixture README §9); True = reference behaviour.
  pyramid_input_inplace_relu: bool = True
  t2v_misaligned_extra_mask: bool = True
  saliency_mean_includes_padding: bool = True
  pyramid_sees_padding: bool = True
  rank_padded_points: bool = True
  inter_conf_crosses_levels: bool = True
  t2v_drop_dummy_values: bool = True
  mix_logits_before_sigmoid: bool = True

  @property
  def scorer_width(self) -> int:
    return self.hidden_dim if self.scorer_channels is None else self.scorer_channels

  @classmethod
  def from_fixture(cls, tiny_config: Dict[str, Any], **overrides) -> "FlashMMRModelConfig":
    """Builds the config from a fixture `tiny_config.json` dict (every dimension read from it)."""
    args = dict(tiny_config.get("args", {}))
    args.update({k: v for k, v in tiny_config.get("TINY", {}).items() if k not in args})
    cfg_model = tiny_config.get("cfg_model", {})
    if "v_feat_dim" in args:
      video_dim = int(args["v_feat_dim"])
    else:
      video_dim = int(args["v_feat_dim_raw"]) + (2 if "tef" in str(args.get("ctx_mode", "")) else 0)
    coord_cfg = cfg_model.get("coord_head_cfg", {})
    kwargs = dict(
        video_feature_dim=video_dim,
        text_feature_dim=int(args["t_feat_dim"]),
        hidden_dim=int(args["hidden_dim"]),
        num_heads=int(args["nheads"]),
        dim_feedforward=int(args["dim_feedforward"]),
        num_dummies=int(args["num_dummies"]),
        t2v_layers=int(args["t2v_layers"]),
        enc_layers=int(args["enc_layers"]),
        dummy_layers=int(args["dummy_layers"]),
        dummy_encoder_num_heads=int(args.get("dummy_encoder_nheads", 8)),
        n_input_proj=int(args["n_input_proj"]),
        input_dropout=float(args["input_dropout"]),
        dropout=float(args["dropout"]),
        max_q_l=int(args["max_q_l"]) if int(args["max_q_l"]) != -1 else 100,
        use_txt_pos=bool(args.get("use_txt_pos", False)),
        kernel_size=int(args["kernel_size"]),
        num_conv_layers=int(args["num_conv_layers"]),
        num_mlp_layers=int(args["num_mlp_layers"]),
        scorer_channels=int(args["hidden_dim"]),
        coord_kernel_size=int(coord_cfg.get("kernal_size", 3)),
        strides=tuple(int(s) for s in cfg_model.get("strides", args["strides"])),
        buffer_size=int(cfg_model.get("buffer_size", args.get("buffer_size", 1024))),
        max_num_moment=int(cfg_model.get("max_num_moment", args.get("max_num_moment", 50))),
        clip_length=float(args.get("clip_length", 2.0)),
    )
    kwargs.update(overrides)
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Initialisers (close to the PyTorch defaults; parity tests load weights, so these only matter for training).


def torch_linear_kernel_init(key, shape, dtype=jnp.float32):
  """PyTorch nn.Linear/Conv default: U(±1/sqrt(fan_in)); fan_in = prod(shape[:-1])."""
  fan_in = int(np.prod(shape[:-1]))
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


# PyTorch nn.Linear/Conv default bias: U(±1/sqrt(fan_in)) (the AMR layers' initialiser, same draws).
torch_bias_init = layers.torch_default_bias_init


def xavier_uniform_packed_init(key, shape, dtype=jnp.float32):
  """xavier_uniform_ of a torch (3d, d) in_proj weight, stored transposed as (d, 3d)."""
  fan_in, fan_out = shape[0], shape[1]
  bound = math.sqrt(6.0 / (fan_in + fan_out))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _dense(features: int, fan_in: int, name: str, use_bias: bool = True, transformer_init: bool = False):
  kernel_init = nn.initializers.normal(0.02) if transformer_init else torch_linear_kernel_init
  return nn.Dense(features, use_bias=use_bias, kernel_init=kernel_init, bias_init=torch_bias_init(fan_in),
                  name=name)


def _layer_norm(name: str):
  return layers.layer_norm(LAYER_NORM_EPS, name)


def prelu(x: Array, slope: Array) -> Array:
  """torch nn.PReLU with one shared slope."""
  return jnp.where(x >= 0, x, slope * x)


# ----------------------------------------------------------------------------------------------------------------
# Building blocks.


class LinearLayer(nn.Module):
  """LayerNorm → Dropout → Linear → optional ReLU (reference `LinearLayer`).

  Not `layers.LinearLayer`: the checkpoint / torch-name layout (`layer_norm`, `linear`) and the kernel init differ.
  """
  in_dim: int
  out_dim: int
  dropout_rate: float
  use_relu: bool

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    x = _layer_norm("layer_norm")(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = _dense(self.out_dim, self.in_dim, "linear")(x)
    return nn.relu(x) if self.use_relu else x


class DropPath(nn.Module):
  """Per-sample stochastic depth over the batch axis (reference `DropPath`, batch-first here)."""
  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    key = self.make_rng("dropout")
    mask = jnp.floor(keep + jax.random.uniform(key, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype))
    return x / keep * mask


def _split_heads(x: Array, num_heads: int) -> Array:
  # [B, L, D] -> [B, H, L, D/H] (layers.split_heads gives [B, L, H, D/H])
  return layers.split_heads(x, num_heads).transpose(0, 2, 1, 3)


def _merge_heads(x: Array) -> Array:
  # [B, H, L, hd] -> [B, L, H*hd]
  return layers.merge_heads(x.transpose(0, 2, 1, 3))


class MultiheadSelfAttention(nn.Module):
  """torch nn.MultiheadAttention (packed in_proj) with q = k = x + pos and v = x; key-padding mask only."""
  dim: int
  num_heads: int
  dropout_rate: float
  transformer_init: bool

  @nn.compact
  def __call__(self, x: Array, pos: Array, key_valid: Array, deterministic: bool) -> Array:
    # x, pos: [B, L, D]; key_valid: [B, L] bool
    d = self.dim
    kernel_init = nn.initializers.normal(0.02) if self.transformer_init else xavier_uniform_packed_init
    in_proj_kernel = self.param("in_proj_kernel", kernel_init, (d, 3 * d))
    in_proj_bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,))
    qk_input = x + pos
    q = qk_input @ in_proj_kernel[:, :d] + in_proj_bias[:d]  # [B, L, D]
    k = qk_input @ in_proj_kernel[:, d:2 * d] + in_proj_bias[d:2 * d]
    v = x @ in_proj_kernel[:, 2 * d:] + in_proj_bias[2 * d:]
    head_dim = d // self.num_heads
    q = _split_heads(q, self.num_heads) * math.sqrt(1.0 / head_dim)  # [B, H, L, hd]
    k = _split_heads(k, self.num_heads)
    v = _split_heads(v, self.num_heads)
    logits = jnp.einsum("bhqc,bhkc->bhqk", q, k)  # [B, H, L, L]
    logits = jnp.where(key_valid[:, None, None, :], logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = nn.Dropout(self.dropout_rate)(probs, deterministic=deterministic)
    out = _merge_heads(jnp.einsum("bhqk,bhkc->bhqc", probs, v))  # [B, L, D]
    return nn.Dense(d, kernel_init=kernel_init if self.transformer_init else torch_linear_kernel_init,
                    bias_init=nn.initializers.zeros, name="out_proj")(out)


class FeedForward(nn.Module):
  """linear1 → PReLU → Dropout → linear2 (reference FFN with activation 'prelu')."""
  dim: int
  hidden: int
  dropout_rate: float
  transformer_init: bool

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    slope = self.param("prelu_slope", nn.initializers.constant(0.25), (1,))
    h = _dense(self.hidden, self.dim, "linear1", transformer_init=self.transformer_init)(x)
    h = prelu(h, slope)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return _dense(self.dim, self.hidden, "linear2", transformer_init=self.transformer_init)(h)


class PostNormEncoderLayer(nn.Module):
  """Post-norm self-attention layer (reference `TransformerEncoderLayer.forward_post`, PReLU FFN)."""
  dim: int
  num_heads: int
  dim_feedforward: int
  dropout_rate: float
  transformer_init: bool

  @nn.compact
  def __call__(self, x: Array, pos: Array, key_valid: Array, deterministic: bool) -> Array:
    # x, pos: [B, L, D]; key_valid: [B, L]
    attn = MultiheadSelfAttention(self.dim, self.num_heads, self.dropout_rate, self.transformer_init,
                                  name="self_attn")(x, pos, key_valid, deterministic)
    x = x + DropPath(self.dropout_rate)(attn, deterministic)
    x = _layer_norm("norm1")(x)
    ffn = FeedForward(self.dim, self.dim_feedforward, self.dropout_rate, self.transformer_init,
                      name="ffn")(x, deterministic)
    x = x + DropPath(self.dropout_rate)(ffn, deterministic)
    return _layer_norm("norm2")(x)


class AdaptiveCrossAttentionLayer(nn.Module):
  """ACA layer (reference `T2V_TransformerEncoderLayer` + the projection-free cross attention).

  Video clips are queries; [dummies; text] are keys (with position) and values (without). There are no q/k/v
  projections, only `out_proj`.
  """
  dim: int
  num_heads: int
  dim_feedforward: int
  dropout_rate: float
  num_dummies: int
  misaligned_extra_mask: bool
  drop_dummy_values: bool

  @nn.compact
  def __call__(self, video: Array, video_pos: Array, video_valid: Array, keys: Array, key_pos: Array,
               key_valid: Array, mask_source_rows: Array, deterministic: bool) -> Tuple[Array, Array]:
    # video, video_pos: [B, Lv, D]; video_valid: [B, Lv]; keys, key_pos: [B, Lk, D]; key_valid: [B, Lk]
    # mask_source_rows: [B, H] int, the row whose extra mask sample b / head h uses (§9.2).
    head_dim = self.dim // self.num_heads
    q = _split_heads(video + video_pos, self.num_heads) * float(head_dim) ** -0.5  # [B, H, Lv, hd]
    k = _split_heads(keys + key_pos, self.num_heads)  # [B, H, Lk, hd]
    v = _split_heads(keys, self.num_heads)  # [B, H, Lk, hd]
    logits = jnp.einsum("bhqc,bhkc->bhqk", q, k)  # [B, H, Lv, Lk]
    extra_mask = jnp.logical_and(~video_valid[:, :, None], ~key_valid[:, None, :])  # [B, Lv, Lk] True = masked
    if self.misaligned_extra_mask:
      extra_mask = extra_mask[mask_source_rows]  # [B, H, Lv, Lk]
    else:
      extra_mask = extra_mask[:, None]  # [B, 1, Lv, Lk]
    logits = jnp.where(extra_mask, -jnp.inf, logits)
    logits = jnp.where(key_valid[:, None, None, :], logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)  # [B, H, Lv, Lk]
    probs_dropped = nn.Dropout(self.dropout_rate)(probs, deterministic=deterministic)
    if self.drop_dummy_values:
      nd = self.num_dummies
      out = jnp.einsum("bhqk,bhkc->bhqc", probs_dropped[..., nd:], v[:, :, nd:])
    else:
      out = jnp.einsum("bhqk,bhkc->bhqc", probs_dropped, v)
    out = _merge_heads(out)  # [B, Lv, D]
    out = nn.Dense(self.dim, kernel_init=nn.initializers.normal(0.02), bias_init=nn.initializers.zeros,
                   name="out_proj")(out)
    attn_mean = probs.sum(axis=1) / self.num_heads  # [B, Lv, Lk]

    # The FFN residual adds to the pre-norm1 sum (reference `forward_post`), unlike the video encoder layer.
    summed = video + DropPath(self.dropout_rate)(out, deterministic)
    normed = _layer_norm("norm1")(summed)
    ffn = FeedForward(self.dim, self.dim_feedforward, self.dropout_rate, True, name="ffn")(normed, deterministic)
    summed = summed + DropPath(self.dropout_rate)(ffn, deterministic)
    return _layer_norm("norm2")(summed), attn_mean


class ConfidenceScorer(nn.Module):
  """Conv(1×k) + ReLU stack over time, then an MLP C → C/2 … → 1 (reference `ConfidenceScorer`)."""
  in_channels: int
  channels: int
  kernel_size: int
  num_conv_layers: int
  num_mlp_layers: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    # x: [B, L, Din] -> [B, L, 1]
    pad = self.kernel_size // 2
    for i in range(self.num_conv_layers):
      fan_in = (self.in_channels if i == 0 else self.channels) * self.kernel_size
      x = nn.Conv(self.channels, (self.kernel_size,), padding=[(pad, pad)], kernel_init=torch_linear_kernel_init,
                  bias_init=torch_bias_init(fan_in), name=f"conv_{i}")(x)
      x = nn.relu(x)
    hidden = self.channels // 2
    dims_in = [self.channels] + [hidden] * (self.num_mlp_layers - 1)
    dims_out = [hidden] * (self.num_mlp_layers - 1) + [1]
    for i, (d_in, d_out) in enumerate(zip(dims_in, dims_out)):
      x = _dense(d_out, d_in, f"mlp_{i}")(x)
      if i < self.num_mlp_layers - 1:
        x = nn.relu(x)
    return x


class CoordinateHead(nn.Module):
  """Conv1d(k) → ReLU → Conv1d(k → 2) (reference `ConvHead`)."""
  dim: int
  kernel_size: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    # x: [B, L, D] -> [B, L, 2]
    pad = self.kernel_size // 2
    fan_in = self.dim * self.kernel_size
    x = nn.Conv(self.dim, (self.kernel_size,), padding=[(pad, pad)], kernel_init=torch_linear_kernel_init,
                bias_init=torch_bias_init(fan_in), name="conv_0")(x)
    x = nn.relu(x)
    return nn.Conv(2, (self.kernel_size,), padding=[(pad, pad)], kernel_init=torch_linear_kernel_init,
                   bias_init=torch_bias_init(fan_in), name="conv_1")(x)


# ----------------------------------------------------------------------------------------------------------------
# Static helpers: positions, pyramid geometry, anchor points.


def sine_position_embedding(mask: Array, dim: int, temperature: float = 10000.0) -> Array:
  """Normalised sine PE of the reference `PositionEmbeddingSine(d, normalize=True)`.

  Args:
    mask: [B, L] 1 = valid.
    dim: number of features.
    temperature: frequency base.

  Returns:
    [B, L, dim]; padded positions get the last valid position's value.
  """
  x_embed = jnp.cumsum(mask.astype(jnp.float32), axis=1)  # [B, L]
  x_embed = x_embed / (x_embed[:, -1:] + 1e-6) * (2 * math.pi)
  dim_t = np.arange(dim, dtype=np.float32)
  dim_t = (temperature ** (2 * (dim_t // 2) / dim)).astype(np.float32)
  pos = x_embed[:, :, None] / dim_t  # [B, L, dim]
  pos = jnp.stack((jnp.sin(pos[:, :, 0::2]), jnp.cos(pos[:, :, 1::2])), axis=3)
  return pos.reshape(pos.shape[0], pos.shape[1], -1)


def pyramid_level_sizes(num_clips: int, strides: Sequence[int]) -> Tuple[int, ...]:
  """Points per pyramid level; levels with stride > num_clips are skipped as in the reference."""
  return tuple(num_clips // s for s in strides if num_clips >= s)


def regression_ranges(strides: Sequence[int]) -> Tuple[Tuple[float, float], ...]:
  """Per-level (lo, hi) of max(t − s, e − t) in clip units: (0,s1), (s1,s2), …, (s_last, inf)."""
  ranges, last = [], 0.0
  for stride in strides[1:]:
    ranges.append((float(last), float(stride)))
    last = stride
  ranges.append((float(last), float("inf")))
  return tuple(ranges)


def anchor_points(num_clips: int, strides: Sequence[int], buffer_size: int = 1024) -> np.ndarray:
  """Anchor points (t, reg_lo, reg_hi, stride) for every level, concatenated level by level.

  Args:
    num_clips: padded number of clips L.
    strides: pyramid strides.
    buffer_size: the reference point buffer; a level may not have more than buffer_size / stride points.

  Returns:
    [P, 4] float32; point n of level k is at clip n·stride_k.
  """
  rows = []
  for stride, (lo, hi), size in zip(strides, regression_ranges(strides), pyramid_level_sizes(num_clips, strides)):
    capacity = len(range(0, buffer_size, stride))
    if size > capacity:
      raise ValueError(f"reached max buffer size: level stride {stride} has {size} > {capacity} points")
    t = np.arange(size, dtype=np.float32) * stride
    rows.append(np.stack([t, np.full_like(t, lo), np.full_like(t, hi), np.full_like(t, stride)], axis=1))
  return np.concatenate(rows, axis=0).astype(np.float32)


def pyramid_masks(video_mask: Array, strides: Sequence[int]) -> Tuple[Array, ...]:
  """max_pool1d(mask, s, s) per level: a level position is valid if any clip in its window is."""
  num_clips = video_mask.shape[1]
  out = []
  for s in strides:
    if num_clips < s:
      continue
    n = num_clips // s
    out.append(video_mask[:, :n * s].reshape(video_mask.shape[0], n, s).max(axis=2))
  return tuple(out)


def misaligned_mask_rows(row_selected: Array, num_heads: int) -> Array:
  """Row whose ACA extra mask sample b / head h reads, reproducing `.repeat(nhead, 1, 1)` (§9.2).

  The reference runs the attention on the sub-batch of selected rows (all rows in the main pass, the
  `real_neg_mask` rows in the negative pass). Sample c (compact index) head h then uses the mask of compact
  row (c·H + h) mod N.

  Args:
    row_selected: [B] bool.
    num_heads: H.

  Returns:
    [B, H] int32 original row indices (garbage but in range for unselected rows).
  """
  row_selected = row_selected.astype(bool)
  count = jnp.maximum(jnp.sum(row_selected.astype(jnp.int32)), 1)
  order = jnp.argsort(~row_selected, stable=True)  # selected rows first, original order
  compact = jnp.cumsum(row_selected.astype(jnp.int32)) - 1  # [B]
  compact = jnp.maximum(compact, 0)
  flat = compact[:, None] * num_heads + jnp.arange(num_heads)[None, :]  # [B, H]
  return order[flat % count].astype(jnp.int32)


def real_negative_mask(vids: Sequence[str], dset_name: str = "hl") -> np.ndarray:
  """`ori_vid[b] != ori_vid[(b+1) mod B]`; for hl the last two `_` fields are stripped (reference find_nth)."""

  def original_vid(vid: str) -> str:
    if dset_name != "hl":
      return vid
    n = vid.count("_") - 1
    start = vid.find("_")
    while start >= 0 and n > 1:
      start = vid.find("_", start + 1)
      n -= 1
    return vid[:start] if start != -1 else vid

  ori = [original_vid(v) for v in vids]
  rolled = ori[1:] + ori[:1]
  return np.array([a != b for a, b in zip(ori, rolled)], dtype=bool)


def decode_boundaries(out_coord: Array, points: Array, scores: Array, clip_length: float) -> Array:
  """[t − d_s·stride, t + d_e·stride] · clip_length (seconds) plus the score.

  Args:
    out_coord: [B, P, 2] (d_start, d_end) in stride units.
    points: [P, 4] anchor points.
    scores: [B, P, 1] sigmoid scores.
    clip_length: seconds per clip.

  Returns:
    [B, P, 3] in point order.
  """
  stride = points[:, 3][None, :, None]  # [1, P, 1]
  t = points[:, 0][None, :, None]
  signed = out_coord * jnp.array([-1.0, 1.0], out_coord.dtype)
  bounds = signed * stride + t
  bounds = bounds / (1.0 / clip_length)
  return jnp.concatenate([bounds, scores], axis=-1)


def sort_by_score(boundaries: Array, score_for_ranking: Optional[Array] = None) -> Tuple[Array, Array]:
  """Sorts [B, P, 3] windows by score, descending, stable (first index first among exact ties).

  torch's CPU sort is an introsort, so exactly tied scores (only the identical padded points) may come out in
  another order there; `flashmmr_postprocess.torch_sort_descending` reproduces it on the host.
  """
  key = boundaries[..., 2] if score_for_ranking is None else score_for_ranking
  order = jnp.argsort(-key, axis=1, stable=True)  # [B, P]
  return jnp.take_along_axis(boundaries, order[..., None], axis=1), order


# ----------------------------------------------------------------------------------------------------------------
# The network.


class FlashMMR(nn.Module):
  """FlashVTG / FlashMMR network: training-branch outputs (all points) plus the intermediates of the fixture."""
  config: FlashMMRModelConfig

  def setup(self):
    cfg = self.config
    d = cfg.hidden_dim
    self.video_input_proj = [
        LinearLayer(cfg.video_feature_dim if i == 0 else d, d, cfg.input_dropout, i != cfg.n_input_proj - 1,
                    name=f"video_input_proj_{i}") for i in range(cfg.n_input_proj)
    ]
    self.text_input_proj = [
        LinearLayer(cfg.text_feature_dim if i == 0 else d, d, cfg.input_dropout, i != cfg.n_input_proj - 1,
                    name=f"text_input_proj_{i}") for i in range(cfg.n_input_proj)
    ]
    self.token_type_embeddings = self.param("token_type_embeddings", nn.initializers.normal(0.02), (2, d))
    self.dummy_tokens = self.param("dummy_tokens", nn.initializers.normal(1.0), (cfg.num_dummies, d))
    self.dummy_positions = self.param("dummy_positions", nn.initializers.normal(1.0), (cfg.num_dummies, d))
    # Trainable text positions: created as in the reference even when unused (use_txt_pos=False).
    self.text_position_table = self.param("text_position_table", nn.initializers.normal(1.0), (cfg.max_q_l, d))
    self.text_position_norm_scale = self.param("text_position_norm_scale", nn.initializers.ones, (d,))
    self.text_position_norm_bias = self.param("text_position_norm_bias", nn.initializers.zeros, (d,))
    self.dummy_encoder_layers = [
        PostNormEncoderLayer(d, cfg.dummy_encoder_num_heads, cfg.dim_feedforward, cfg.dropout, False,
                             name=f"dummy_encoder_layer_{i}") for i in range(cfg.dummy_layers)
    ]
    self.t2v_layers = [
        AdaptiveCrossAttentionLayer(d, cfg.num_heads, cfg.dim_feedforward, cfg.dropout, cfg.num_dummies,
                                    cfg.t2v_misaligned_extra_mask, cfg.t2v_drop_dummy_values,
                                    name=f"t2v_layer_{i}") for i in range(cfg.t2v_layers)
    ]
    self.video_encoder_layers = [
        PostNormEncoderLayer(d, cfg.num_heads, cfg.dim_feedforward, cfg.dropout, True,
                             name=f"video_encoder_layer_{i}") for i in range(cfg.enc_layers)
    ]
    self.saliency_proj1 = _dense(d, d, "saliency_proj1")
    self.saliency_proj2 = _dense(d, d, "saliency_proj2")
    pyramid = {}
    for level, stride in enumerate(cfg.strides):
      depth = int(round(math.log2(stride)))
      if 2**depth != stride or depth < 0:
        raise ValueError(f"pyramid strides must be powers of two >= 1, got {stride}")
      for j in range(depth):
        pyramid[f"{level}_{j}_conv"] = nn.Conv(d, (2,), strides=(2,), padding="VALID",
                                               kernel_init=torch_linear_kernel_init, bias_init=torch_bias_init(2 * d),
                                               name=f"pyramid_level_{level}_conv_{j}")
        pyramid[f"{level}_{j}_norm"] = _layer_norm(f"pyramid_level_{level}_norm_{j}")
    self.pyramid = pyramid
    self.query_pooling = nn.Dense(1, use_bias=False, kernel_init=torch_linear_kernel_init, name="query_pooling")
    self.intra_scorer = ConfidenceScorer(d, cfg.scorer_width, cfg.kernel_size, cfg.num_conv_layers,
                                         cfg.num_mlp_layers, name="intra_scorer")
    self.inter_scorer = ConfidenceScorer(d, cfg.scorer_width, cfg.kernel_size, cfg.num_conv_layers,
                                         cfg.num_mlp_layers, name="inter_scorer")
    self.coef = self.param("coef", nn.initializers.constant(cfg.init_coef), (len(cfg.strides),))
    self.coord_head = CoordinateHead(d, cfg.coord_kernel_size, name="coord_head")
    self.mix_x = self.param("mix_x", nn.initializers.constant(cfg.init_mix_x), ())

  # -------------------------------------------------------------------------------------------------------------

  def _video_text_transformer(self, video: Array, video_pos: Array, video_valid: Array, keys: Array,
                              key_pos: Array, key_valid: Array, row_selected: Array, deterministic: bool,
                              inter: Dict[str, Array], prefix: str) -> Tuple[Array, Array, Array]:
    """ACA layers → video encoder → saliency (reference `Transformer.forward`)."""
    cfg = self.config
    mask_rows = misaligned_mask_rows(row_selected, cfg.num_heads)
    inter[prefix + "t2v_input_src"] = jnp.concatenate([video, keys], axis=1)
    attn_sum = None
    x = video
    for i, layer in enumerate(self.t2v_layers):
      x, attn = layer(x, video_pos, video_valid, keys, key_pos, key_valid, mask_rows, deterministic)
      inter[f"{prefix}t2v_layer{i}.out_vid"] = x
      inter[f"{prefix}t2v_layer{i}.attn"] = attn
      attn_sum = attn if attn_sum is None else attn_sum + attn
    attn_mean = attn_sum / len(self.t2v_layers)  # [B, Lv, Lk]
    inter[prefix + "t2v_attn_mean"] = attn_mean
    for i, layer in enumerate(self.video_encoder_layers):
      x = layer(x, video_pos, video_valid, deterministic)
      inter[f"{prefix}enc_layer{i}.out"] = x
    memory = x  # [B, Lv, D] = F
    inter[prefix + "memory"] = memory
    if cfg.saliency_mean_includes_padding:
      memory_global = memory.mean(axis=1)  # [B, D]
    else:
      valid = video_valid.astype(memory.dtype)[:, :, None]
      memory_global = (memory * valid).sum(axis=1) / jnp.maximum(valid.sum(axis=1), 1.0)
    proj1 = self.saliency_proj1(memory)  # [B, Lv, D]
    proj2 = self.saliency_proj2(memory_global)  # [B, D]
    inter[prefix + "saliency_proj1_out"] = proj1
    inter[prefix + "memory_global"] = memory_global
    inter[prefix + "saliency_proj2_out"] = proj2
    saliency = jnp.sum(proj1 * proj2[:, None, :], axis=-1) / np.float32(np.sqrt(cfg.hidden_dim))  # [B, Lv]
    return memory, attn_mean, saliency

  def _text_attention_values(self, attn_mean: Array, text_mask: Array) -> Array:
    # attn_mean: [B, Lv, nd+Lt]; text_mask: [B, Lt] -> [B, Lv]
    nd = self.config.num_dummies
    values = (attn_mean[:, :, nd:] * text_mask[:, None, :]).sum(axis=2)
    return jnp.clip(values, 0.0, 1.0)

  def __call__(self, src_vid: Array, src_vid_mask: Array, src_txt: Array, src_txt_mask: Array,
               real_neg_mask: Optional[Array] = None, deterministic: bool = True) -> Dict[str, Any]:
    """Training-branch forward over a padded batch.

    Args:
      src_vid: [B, Lv, video_feature_dim] video features (TEF included).
      src_vid_mask: [B, Lv] 1 = valid clip.
      src_txt: [B, Lt, text_feature_dim] text token features.
      src_txt_mask: [B, Lt] 1 = valid token.
      real_neg_mask: [B] bool from `real_negative_mask(vids)`; None skips the negative-pair pass.
      deterministic: False enables dropout / DropPath (needs a 'dropout' rng).

    Returns:
      dict with the reference output keys (`saliency_scores`, `t2vattnvalues`, `point`, `video_emb`,
      `query_emb`, `video_msk`, `pymid_msk` (concatenated [B, P]), `out_class`, `out_coord`, `pred_spans`,
      `pred_spans_order`, `decoded_unsorted`, `dummy_tokens`, and, with real_neg_mask, `saliency_scores_neg`,
      `t2vattnvalues_neg` for all B rows (meaningful where real_neg_mask) and `real_neg_mask`) plus
      `intermediates` (fixture `inter.*` names without the prefix).
    """
    cfg = self.config
    inter: Dict[str, Array] = {}
    batch, num_clips = src_vid.shape[:2]
    video_mask = src_vid_mask.astype(jnp.float32)
    text_mask = src_txt_mask.astype(jnp.float32)
    video_valid = src_vid_mask > 0
    text_valid = src_txt_mask > 0

    video = src_vid
    for layer in self.video_input_proj:
      video = layer(video, deterministic)
    text = src_txt
    for layer in self.text_input_proj:
      text = layer(text, deterministic)
    inter["vid_proj"], inter["txt_proj"] = video, text
    video = video + self.token_type_embeddings[1]
    text = text + self.token_type_embeddings[0]
    inter["vid_typed"], inter["txt_typed"] = video, text
    video_pos = sine_position_embedding(video_mask, cfg.hidden_dim)  # [B, Lv, D]
    inter["pos_vid"] = video_pos
    if cfg.use_txt_pos:
      length = text.shape[1]
      embedded = text + self.text_position_table[:length][None]
      mean = embedded.mean(-1, keepdims=True)
      var = jnp.mean(jnp.square(embedded - mean), -1, keepdims=True)
      text_pos = (embedded - mean) / jnp.sqrt(var + LAYER_NORM_EPS) * self.text_position_norm_scale \
          + self.text_position_norm_bias
    else:
      text_pos = jnp.zeros_like(text)

    # Dummy/text encoder: [dummies; text] with positions [dummy_pos; text_pos].
    nd = cfg.num_dummies
    dummies = jnp.broadcast_to(self.dummy_tokens[None], (batch, nd, cfg.hidden_dim))
    dummy_pos = jnp.broadcast_to(self.dummy_positions[None], (batch, nd, cfg.hidden_dim))
    key_pos = jnp.concatenate([dummy_pos, text_pos], axis=1)  # [B, nd+Lt, D]
    key_valid = jnp.concatenate([jnp.ones((batch, nd), bool), text_valid], axis=1)  # [B, nd+Lt]
    encoded = jnp.concatenate([dummies, text], axis=1)
    for i, layer in enumerate(self.dummy_encoder_layers):
      encoded = layer(encoded, key_pos, key_valid, deterministic)
      inter[f"dummy_layer{i}.out"] = encoded
    inter["dummy_encoder_out"] = encoded
    dummy_encoded = encoded[:, :nd]  # [B, nd, D]
    keys = jnp.concatenate([dummy_encoded, text], axis=1)  # [B, nd+Lt, D]

    all_rows = jnp.ones((batch,), bool)
    memory, attn_mean, saliency = self._video_text_transformer(video, video_pos, video_valid, keys, key_pos,
                                                               key_valid, all_rows, deterministic, inter, "")
    t2v_values = self._text_attention_values(attn_mean, text_mask)
    inter["saliency_scores"] = saliency

    # Pyramid (§9.1: the stride-1 in-place ReLU feeds the other levels and video_emb).
    relu_memory = nn.relu(memory)
    pyramid_input = relu_memory if cfg.pyramid_input_inplace_relu else memory
    if not cfg.pyramid_sees_padding:
      pyramid_input = pyramid_input * video_mask[:, :, None]
      relu_memory = relu_memory * video_mask[:, :, None]
    video_emb = pyramid_input
    inter["pyramid_input_after_inplace_relu"] = video_emb
    levels = []
    for level, stride in enumerate(cfg.strides):
      if num_clips < stride:
        continue
      if stride == 1:
        x = relu_memory
      else:
        x = pyramid_input
        for j in range(int(round(math.log2(stride)))):
          x = self.pyramid[f"{level}_{j}_conv"](x)
          x = self.pyramid[f"{level}_{j}_norm"](x)
          x = nn.relu(x)
      inter[f"pyramid.level{len(levels)}"] = x
      levels.append(x)
    level_masks = pyramid_masks(src_vid_mask.astype(jnp.int32), cfg.strides)
    if not cfg.pyramid_sees_padding:
      levels = [lv * m.astype(lv.dtype)[:, :, None] for lv, m in zip(levels, level_masks)]
    points = jnp.asarray(anchor_points(num_clips, cfg.strides, cfg.buffer_size))  # [P, 4]

    # Query pooling (AdaPooling over the typed text, no dummies).
    att = self.query_pooling(text)  # [B, Lt, 1]
    att = att + jnp.where(text_mask[:, :, None] == 1, 0.0, -jnp.inf)
    att = jax.nn.softmax(att, axis=1)
    query_emb = jnp.einsum("bld,blo->bod", text, att)  # [B, 1, D]
    inter["query_emb"] = query_emb

    # Scores: intra per level, inter over the concatenation (§9.4), mixed on logits (§9.7).
    intra = [self.intra_scorer(lv) for lv in levels]
    for k, c in enumerate(intra):
      inter[f"class_head.level{k}"] = c
    intra = jnp.concatenate(intra, axis=1)  # [B, P, 1]
    inter["class_head_cat"] = intra
    if cfg.inter_conf_crosses_levels:
      inter_conf = self.inter_scorer(jnp.concatenate(levels, axis=1))
    else:
      inter_conf = jnp.concatenate([self.inter_scorer(lv) for lv in levels], axis=1)
    inter["conf_head"] = inter_conf
    x_mix = self.mix_x
    if cfg.mix_logits_before_sigmoid:
      out_class = x_mix * intra + (1 - x_mix) * inter_conf
    else:
      prob = x_mix * jax.nn.sigmoid(intra) + (1 - x_mix) * jax.nn.sigmoid(inter_conf)
      prob = jnp.clip(prob, 1e-7, 1 - 1e-7)
      out_class = jnp.log(prob) - jnp.log1p(-prob)

    coords = []
    for k, lv in enumerate(levels):
      raw = self.coord_head(lv)  # [B, Lk, 2]
      inter[f"coord_head_raw.level{k}"] = raw
      coords.append(jnp.exp(raw) * self.coef[k])
    out_coord = jnp.concatenate(coords, axis=1)  # [B, P, 2]

    score = jax.nn.sigmoid(out_class)  # [B, P, 1]
    inter["score_sigmoid"] = score
    decoded = decode_boundaries(out_coord, points, score, cfg.clip_length)
    inter["decoded_unsorted"] = decoded
    point_mask = jnp.concatenate(level_masks, axis=1)  # [B, P]
    ranking = score[..., 0] if cfg.rank_padded_points else jnp.where(point_mask > 0, score[..., 0], -1.0)
    pred_spans, order = sort_by_score(decoded, ranking)
    inter["pred_spans_order"] = order

    output: Dict[str, Any] = dict(
        saliency_scores=saliency,
        t2vattnvalues=t2v_values,
        point=points,
        video_emb=video_emb,
        query_emb=query_emb,
        video_msk=src_vid_mask.astype(jnp.int32),
        pymid_msk=point_mask,
        pymid_msk_levels=level_masks,
        out_class=out_class,
        out_coord=out_coord,
        pred_spans=pred_spans,
        pred_spans_order=order,
        decoded_unsorted=decoded,
        dummy_tokens=dummy_encoded,
        memory=memory,
    )

    if real_neg_mask is not None:
      # Negative pass: own video with the next sample's [dummies; text] (rolled by one), run on all rows;
      # rows without a real negative are computed but meaningless. The extra-mask tiling follows the
      # compacted sub-batch of real rows, as in the reference.
      real_neg_mask = real_neg_mask.astype(bool)
      keys_neg = jnp.roll(keys, -1, axis=0)
      key_valid_neg = jnp.roll(key_valid, -1, axis=0)
      text_mask_neg = jnp.roll(text_mask, -1, axis=0)
      _, attn_neg, saliency_neg = self._video_text_transformer(video, video_pos, video_valid, keys_neg, key_pos,
                                                               key_valid_neg, real_neg_mask, deterministic, inter,
                                                               "neg.")
      output["saliency_scores_neg"] = saliency_neg
      output["t2vattnvalues_neg"] = self._text_attention_values(attn_neg, text_mask_neg)
      output["src_txt_mask_neg"] = key_valid_neg.astype(jnp.float32)
      output["real_neg_mask"] = real_neg_mask
    output["intermediates"] = inter
    return output


def inference_top_moments(output: Dict[str, Any], max_num_moment: int) -> Array:
  """Eval-branch `boundary`: top-`max_num_moment` [st, ed, score] (seconds) by score, before any clamp.

  Args:
    output: FlashMMR output of a batch-size-1 unpadded forward.
    max_num_moment: k.

  Returns:
    [B, min(P, k), 3].
  """
  pred_spans = output["pred_spans"]
  return pred_spans[:, :min(pred_spans.shape[1], max_num_moment)]
