"""The AMR network (ICCV 2025, TR-DETR base) in Flax linen, numerically faithful to SooLab/AMR @ 2a958a4.

Batch-first throughout; masks are 1/True = valid. See `/work/shared/specs/amr.md` §2 for the architecture.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from amr_jax.ops import layers

Array = jax.Array

STAGES = ('pretrain', 'distill')
PRECISIONS = ('fp32', 'bf16')


@dataclasses.dataclass(frozen=True)
class AMRModelConfig:
  """Every size and switch of the AMR network.

  Attributes:
    hidden_dim: model width d.
    nheads: attention heads.
    dim_feedforward: FFN width inside the transformer layers.
    t2v_layers: text->video cross-attention layers (hard-coded 2 in the original).
    enc_layers: self-attention encoder layers (the encoder is applied twice, HD2MR).
    dec_layers: decoder layers.
    num_queries: anchors per query set (stage 2 runs two sets, so the outputs have 2*num_queries).
    dropout: transformer/fuser dropout.
    input_dropout: dropout inside the input projections.
    n_input_proj: LinearLayers per input projection (1..3).
    max_q_l: rows of the (unused) trainable text positional table.
    stage: 'pretrain' (stage 1) or 'distill' (stage 2: `new_query_embed`, active FFN copies, two passes).
    v_feat_dim: video feature width (TEF included).
    t_feat_dim: text feature width.
    t2v_misaligned_mask: quirk: the T2V extra mask is tiled with `repeat`, so sample b / head h reads sample
      (b*H + h) mod B's mask. Off: per-sample masking only (the extra mask is then redundant with key padding).
    final_masks_from_layer2: quirk: the final `pred_masks` are decoder layer L-2's. Off: the last layer's.
    hd2mr_unmasked_softmax: quirk: the HD2MR softmax over clips includes padding. Off: masked softmax.
    vtc_mean_includes_padding: quirk: `src_vid_cls_ed` averages all padded positions. Off: valid clips only.
    precision: 'fp32' (true fp32 matmuls, Precision.HIGHEST) or 'bf16' (bf16 matmuls, fp32 params/norms/softmax).
    layer_norm_eps: LayerNorm epsilon.
    inverse_sigmoid_eps: clamp of `inverse_sigmoid`.
    pos_temperature: frequency base of both sine encodings.
    logit_scale_init: initial mask-head logit scale, log(1/0.07).
    fuser_mask_value: additive mask of the VSL fuser softmaxes.
    attention_impl: 'exact' (einsum+softmax) or 'jax' (`jax.nn.dot_product_attention` where possible).
    dropout_impl: dropout masks from 'hash' (counter hash, fast on CPU) or 'jax' (`jax.random.bernoulli`);
      see `layers.keep_mask`. PyTorch's dropout stream cannot be reproduced either way.
    fold_eval_layernorm: in eval mode, the input projections whose input is wider than 4x hidden_dim (video
      5378 and text 2048 at the real dims) fold their LayerNorm into the Linear (`layers.folded_layernorm_linear`):
      same math, one pass over the widest tensors fewer.
  """
  hidden_dim: int = 256
  nheads: int = 8
  dim_feedforward: int = 1024
  t2v_layers: int = 2
  enc_layers: int = 2
  dec_layers: int = 4
  num_queries: int = 10
  dropout: float = 0.1
  input_dropout: float = 0.5
  n_input_proj: int = 2
  max_q_l: int = 32
  stage: str = 'pretrain'
  v_feat_dim: int = 5378
  t_feat_dim: int = 2048
  t2v_misaligned_mask: bool = True
  final_masks_from_layer2: bool = True
  hd2mr_unmasked_softmax: bool = True
  vtc_mean_includes_padding: bool = True
  precision: str = 'fp32'
  layer_norm_eps: float = 1e-5
  inverse_sigmoid_eps: float = 1e-3
  pos_temperature: float = 10000.0
  logit_scale_init: float = math.log(1 / 0.07)
  fuser_mask_value: float = -1e30
  attention_impl: str = 'exact'
  dropout_impl: str = 'hash'
  fold_eval_layernorm: bool = True

  def __post_init__(self):
    if self.stage not in STAGES:
      raise ValueError(f'stage must be one of {STAGES}, got {self.stage!r}')
    if self.precision not in PRECISIONS:
      raise ValueError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')
    if self.hidden_dim % self.nheads or self.hidden_dim % 2:
      raise ValueError(f'hidden_dim {self.hidden_dim} must be even and divisible by nheads {self.nheads}')
    if not 1 <= self.n_input_proj <= 3:
      raise ValueError(f'n_input_proj must be 1..3, got {self.n_input_proj}')
    if self.dec_layers < 2 and self.final_masks_from_layer2:
      raise ValueError('final_masks_from_layer2 needs dec_layers >= 2')

  @property
  def is_distill(self) -> bool:
    return self.stage == 'distill'

  @property
  def total_queries(self) -> int:
    """Q of the outputs: num_queries (stage 1) or 2*num_queries (stage 2: pass A then pass B)."""
    return 2 * self.num_queries if self.is_distill else self.num_queries

  @property
  def compute_dtype(self) -> Any:
    return jnp.bfloat16 if self.precision == 'bf16' else jnp.float32

  def replace(self, **changes) -> 'AMRModelConfig':
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_configs(cls, model_cfg: Mapping[str, Any], quirks_cfg: Mapping[str, Any], v_feat_dim: int,
                   t_feat_dim: int) -> 'AMRModelConfig':
    """From `configs/amr_common.py`'s `model_config()` and `quirks_config()` plus the feature widths."""
    field_names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: model_cfg[k] for k in model_cfg.keys() if k in field_names}
    for k in ('t2v_misaligned_mask', 'final_masks_from_layer2', 'hd2mr_unmasked_softmax',
              'vtc_mean_includes_padding'):
      if k in quirks_cfg:
        kwargs[k] = bool(quirks_cfg[k])
    kwargs['v_feat_dim'] = int(v_feat_dim)
    kwargs['t_feat_dim'] = int(t_feat_dim)
    return cls(**kwargs)

  @classmethod
  def from_fixture(cls, tiny_config: Mapping[str, Any], stage: str = 'pretrain',
                   **overrides) -> 'AMRModelConfig':
    """From a fixture's `tiny_config.json` (the whole dict or its 'model' part); quirks = reference."""
    m = tiny_config.get('model', tiny_config)
    kwargs = dict(
        hidden_dim=int(m['hidden_dim']), nheads=int(m['nheads']), dim_feedforward=int(m['dim_feedforward']),
        t2v_layers=int(m.get('t2v_layers', 2)), enc_layers=int(m['enc_layers']),
        dec_layers=int(m['dec_layers']), num_queries=int(m['num_queries']),
        dropout=float(m.get('dropout', 0.1)), input_dropout=float(m.get('input_dropout', 0.5)),
        n_input_proj=int(m.get('n_input_proj', 2)), max_q_l=int(m['max_q_l']), stage=stage,
        v_feat_dim=int(m['v_feat_dim']), t_feat_dim=int(m['t_feat_dim']))
    if 'layernorm_eps' in m:
      kwargs['layer_norm_eps'] = float(m['layernorm_eps'])
    if 'inverse_sigmoid_eps' in m:
      kwargs['inverse_sigmoid_eps'] = float(m['inverse_sigmoid_eps'])
    if 'fuser_mask_value' in m:
      kwargs['fuser_mask_value'] = float(m['fuser_mask_value'])
    vpe = m.get('video_position_embedding', {})
    if isinstance(vpe, Mapping) and 'temperature' in vpe:
      kwargs['pos_temperature'] = float(vpe['temperature'])
      if int(vpe.get('num_pos_feats', kwargs['hidden_dim'])) != kwargs['hidden_dim']:
        raise ValueError('video positional encoding width must equal hidden_dim')
    qse = m.get('query_sine_embedding', {})
    if isinstance(qse, Mapping) and 'features_per_coordinate' in qse:
      if 2 * int(qse['features_per_coordinate']) != kwargs['hidden_dim']:
        raise ValueError('query sine embedding must have hidden_dim/2 features per coordinate')
    mh = m.get('mask_head', {})
    if isinstance(mh, Mapping) and 'logit_scale_init' in mh:
      kwargs['logit_scale_init'] = float(mh['logit_scale_init'])
    kwargs.update(overrides)
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Input side: projections and the VSL context-query fuser.


class InputProjection(nn.Module):
  """`n_input_proj` LinearLayers (`layers_i`); ReLU after all but the last."""
  config: AMRModelConfig
  dropout: float

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    cfg = self.config
    for i in range(cfg.n_input_proj):
      x = layers.LinearLayer(cfg.hidden_dim, self.dropout, relu=i < cfg.n_input_proj - 1,
                             layer_norm_eps=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                             dropout_impl=cfg.dropout_impl, fold_eval_layernorm=cfg.fold_eval_layernorm,
                             name=f'layers_{i}')(x, train=train)
    return x


class CQAttention(nn.Module):
  """VSLNet context-query attention (trilinear score, c2q and q2c), then a k=1 conv (`cqa_linear`) 4d -> d."""
  config: AMRModelConfig

  @nn.compact
  def __call__(self, context: Array, query: Array, context_valid: Array, query_valid: Array, *,
               train: bool) -> Array:
    cfg = self.config
    d = cfg.hidden_dim
    dtype = cfg.compute_dtype
    prec = layers.matmul_precision(dtype)
    # PyTorch xavier_uniform fans: [d,1] -> fan_in 1, fan_out d; [1,1,d] -> fan_in d, fan_out d.
    w_context = self.param('w4C', layers.xavier_uniform_fused(1, d), (d, 1), jnp.float32)
    w_query = self.param('w4Q', layers.xavier_uniform_fused(1, d), (d, 1), jnp.float32)
    w_mul = self.param('w4mlu', layers.xavier_uniform_fused(d, d), (1, 1, d), jnp.float32)
    dropout = layers.Dropout(cfg.dropout, deterministic=not train, impl=cfg.dropout_impl)
    context_d = dropout(context).astype(dtype)  # dropout only feeds the score
    query_d = dropout(query).astype(dtype)
    score_c = jnp.einsum('bcd,do->bco', context_d, w_context.astype(dtype), precision=prec)  # [B, Lc, 1]
    score_q = jnp.einsum('bqd,do->boq', query_d, w_query.astype(dtype), precision=prec)  # [B, 1, Lq]
    score_cq = jnp.einsum('bcd,bqd->bcq', context_d * w_mul[0].astype(dtype), query_d, precision=prec)
    score = (score_c + score_q + score_cq).astype(jnp.float32)  # [B, Lc, Lq]
    mask_value = cfg.fuser_mask_value
    score_row = jax.nn.softmax(
        score + (1.0 - query_valid[:, None, :].astype(jnp.float32)) * mask_value, axis=2)  # [B, Lc, Lq]
    score_col = jax.nn.softmax(
        score + (1.0 - context_valid[:, :, None].astype(jnp.float32)) * mask_value, axis=1)  # [B, Lc, Lq]
    c2q = jnp.einsum('bcq,bqd->bcd', score_row.astype(dtype), query.astype(dtype), precision=prec)
    row_col = jnp.einsum('bcq,bkq->bck', score_row, score_col, precision=prec)  # [B, Lc, Lc]
    q2c = jnp.einsum('bck,bkd->bcd', row_col.astype(dtype), context.astype(dtype), precision=prec)
    fused = jnp.concatenate([context, c2q, context * c2q, context * q2c], axis=-1)  # [B, Lc, 4d]
    return layers.Linear(d, dtype=dtype, name='cqa_linear')(fused)


class CQConcatenate(nn.Module):
  """Attention-pooled query (`weighted_pool`) broadcast and concatenated to the context, k=1 conv 2d -> d."""
  config: AMRModelConfig

  @nn.compact
  def __call__(self, context: Array, query: Array, query_valid: Array) -> Array:
    cfg = self.config
    d = cfg.hidden_dim
    prec = layers.matmul_precision(cfg.compute_dtype)
    pool_weight = self.param('weighted_pool', layers.xavier_uniform_fused(1, d), (d, 1), jnp.float32)
    alpha = jnp.einsum('bqd,do->bqo', query, pool_weight, precision=prec).astype(jnp.float32)  # [B, Lq, 1]
    alpha = alpha + (1.0 - query_valid[:, :, None].astype(jnp.float32)) * cfg.fuser_mask_value
    alpha = jax.nn.softmax(alpha, axis=1)
    pooled = jnp.einsum('bqd,bqo->bd', query.astype(jnp.float32), alpha, precision=prec)  # [B, d]
    pooled = jnp.broadcast_to(pooled[:, None, :], context.shape[:2] + (d,))
    fused = jnp.concatenate([context, pooled.astype(context.dtype)], axis=-1)  # [B, Lc, 2d]
    return layers.Linear(d, dtype=cfg.compute_dtype, name='conv1d')(fused)


class VSLFuser(nn.Module):
  """TR-DETR's VSL fuser: ReLU(CQConcatenate(CQAttention(video, text), text))."""
  config: AMRModelConfig

  @nn.compact
  def __call__(self, video: Array, text: Array, video_valid: Array, text_valid: Array, *,
               train: bool) -> Array:
    fused = CQAttention(self.config, name='cq_attention')(video, text, video_valid, text_valid, train=train)
    fused = CQConcatenate(self.config, name='cq_concat')(fused, text, text_valid)
    return jax.nn.relu(fused)


class TrainablePositionalEncoding(nn.Module):
  """Moment-DETR's text positional table + LayerNorm. Built (so its params exist) but never used by AMR."""
  config: AMRModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    table = self.param('position_embeddings', nn.initializers.normal(1.0), (cfg.max_q_l, cfg.hidden_dim),
                       jnp.float32)
    positions = jnp.arange(x.shape[1])
    return layers.layer_norm(cfg.layer_norm_eps, 'LayerNorm')(x + table[positions][None])


# ----------------------------------------------------------------------------------------------------------------
# Transformer: T2V layers, encoder, decoder.


def _transformer_linear(features: int, dtype: Any, name: Optional[str] = None) -> layers.Linear:
  """A Linear inside the transformer: xavier-uniform matrix, PyTorch-default bias."""
  return layers.Linear(features, kernel_init=layers.xavier_uniform, dtype=dtype, name=name)


class T2VEncoderLayer(nn.Module):
  """`T2V_TransformerEncoderLayer_no_global`: video queries attend to text; post-norm with the FFN residual on x1."""
  config: AMRModelConfig

  @nn.compact
  def __call__(self, video: Array, video_valid: Array, pos_video: Array, text: Array, text_valid: Array, *,
               train: bool) -> Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    drop = layers.Dropout(cfg.dropout, deterministic=not train, impl=cfg.dropout_impl)
    attn_masked = None
    if cfg.t2v_misaligned_mask:
      attn_masked = t2v_misaligned_extra_mask(video_valid, text_valid, cfg.nheads)  # [B, H, Lv, Lt]
    attended = layers.MultiheadAttention(cfg.hidden_dim, cfg.nheads, cfg.dropout, dtype=dtype,
                                         implementation=cfg.attention_impl, dropout_impl=cfg.dropout_impl,
                                         name='self_attn')(
        video + pos_video, text, text, key_valid=text_valid, attn_masked=attn_masked, train=train)
    x1 = video + drop(attended)
    y = layers.layer_norm(cfg.layer_norm_eps, 'norm1')(x1)
    y = _transformer_linear(cfg.dim_feedforward, dtype, 'linear1')(y)
    y = layers.PReLU(name='activation')(y)
    y = _transformer_linear(cfg.hidden_dim, dtype, 'linear2')(drop(y))
    return layers.layer_norm(cfg.layer_norm_eps, 'norm2')(x1 + drop(y))


def t2v_misaligned_extra_mask(video_valid: Array, text_valid: Array, num_heads: int) -> Array:
  """The original's T2V `attn_mask`, as the attention op reads it. Returns [B, H, Lv, Lt], True = masked.

  PyTorch builds M[b', i, j] = (clip i is padding in b') AND (token j is padding in b'), tiles it with
  `.repeat(H, 1, 1)` (flat index h*B + b'), but `nn.MultiheadAttention` reads the flat index as b*H + h.
  So sample b / head h gets M[(b*H + h) mod B].
  """
  video_pad = jnp.logical_not(video_valid.astype(bool))
  text_pad = jnp.logical_not(text_valid.astype(bool))
  per_sample = jnp.logical_and(video_pad[:, :, None], text_pad[:, None, :])  # [B, Lv, Lt]
  batch = per_sample.shape[0]
  tiled = jnp.tile(per_sample, (num_heads, 1, 1))  # [H*B, Lv, Lt], flat index h*B + b'
  return tiled.reshape((batch, num_heads) + per_sample.shape[1:])  # read as flat index b*H + h


class EncoderLayer(nn.Module):
  """Post-norm self-attention layer over the video (q = k = x + pos, v = x), PReLU FFN."""
  config: AMRModelConfig

  @nn.compact
  def __call__(self, x: Array, valid: Array, pos: Array, *, train: bool) -> Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    drop = layers.Dropout(cfg.dropout, deterministic=not train, impl=cfg.dropout_impl)
    q = x + pos
    attended = layers.MultiheadAttention(cfg.hidden_dim, cfg.nheads, cfg.dropout, dtype=dtype,
                                         implementation=cfg.attention_impl, dropout_impl=cfg.dropout_impl,
                                         name='self_attn')(
        q, q, x, key_valid=valid, train=train)
    x = layers.layer_norm(cfg.layer_norm_eps, 'norm1')(x + drop(attended))
    y = _transformer_linear(cfg.dim_feedforward, dtype, 'linear1')(x)
    y = layers.PReLU(name='activation')(y)
    y = _transformer_linear(cfg.hidden_dim, dtype, 'linear2')(drop(y))
    return layers.layer_norm(cfg.layer_norm_eps, 'norm2')(x + drop(y))


class T2VEncoder(nn.Module):
  """`t2v_layers` T2V layers (`layers_i`); text passes through unchanged, only the video is returned."""
  config: AMRModelConfig

  @nn.compact
  def __call__(self, video, video_valid, pos_video, text, text_valid, *, train: bool) -> Array:
    for i in range(self.config.t2v_layers):
      video = T2VEncoderLayer(self.config, name=f'layers_{i}')(
          video, video_valid, pos_video, text, text_valid, train=train)
    return video


class Encoder(nn.Module):
  """`enc_layers` self-attention layers (`layers_i`)."""
  config: AMRModelConfig

  @nn.compact
  def __call__(self, x: Array, valid: Array, pos: Array, *, train: bool) -> Array:
    for i in range(self.config.enc_layers):
      x = EncoderLayer(self.config, name=f'layers_{i}')(x, valid, pos, train=train)
    return x


class DecoderLayer(nn.Module):
  """DAB/Conditional-DETR decoder layer with the AMR stage-2 'active' FFN copy.

  Attributes:
    config: model config.
    is_first: layer 0 (owns `ca_qpos_proj` and adds positional terms to the cross-attention content).
  """
  config: AMRModelConfig
  is_first: bool

  def setup(self):
    cfg = self.config
    d, dtype = cfg.hidden_dim, cfg.compute_dtype
    for name in ('sa_qcontent_proj', 'sa_qpos_proj', 'sa_kcontent_proj', 'sa_kpos_proj', 'sa_v_proj',
                 'ca_qcontent_proj', 'ca_kcontent_proj', 'ca_kpos_proj', 'ca_v_proj', 'ca_qpos_sine_proj'):
      setattr(self, name, _transformer_linear(d, dtype))
    if self.is_first:
      self.ca_qpos_proj = _transformer_linear(d, dtype)
    self.self_attn = layers.ProjectionFreeAttention(d, cfg.nheads, cfg.dropout, dtype=dtype,
                                                    implementation=cfg.attention_impl,
                                                    dropout_impl=cfg.dropout_impl)
    self.cross_attn = layers.ProjectionFreeAttention(d, cfg.nheads, cfg.dropout, dtype=dtype,
                                                     implementation=cfg.attention_impl,
                                                     dropout_impl=cfg.dropout_impl)
    self.norm1 = layers.layer_norm(cfg.layer_norm_eps)
    self.norm2 = layers.layer_norm(cfg.layer_norm_eps)
    self.norm3 = layers.layer_norm(cfg.layer_norm_eps)
    self.linear1 = _transformer_linear(cfg.dim_feedforward, dtype)
    self.linear2 = _transformer_linear(d, dtype)
    if cfg.is_distill:
      self.linear1_active = _transformer_linear(cfg.dim_feedforward, dtype)
      self.linear2_active = _transformer_linear(d, dtype)
    self.activation = layers.PReLU()
    self.drop = layers.Dropout(cfg.dropout, impl=cfg.dropout_impl)

  def __call__(self, tgt: Array, memory: Array, memory_valid: Array, pos: Array, query_pos: Array,
               query_sine_embed: Array, *, num_passes: int, train: bool) -> Array:
    """One layer for all query passes at once (the passes are folded into the batch, pass-major).

    Args:
      tgt: [P*B, Q, d] content queries; rows p*B:(p+1)*B are pass p.
      memory: [B, L, d] encoder memory (video), shared by the passes.
      memory_valid: [B, L] True = valid clip.
      pos: [B, L, d] video positional encoding.
      query_pos: [P*B, Q, d] ref_point_head(sine(reference)).
      query_sine_embed: [P*B, Q, d] scaled/modulated sine embedding of the reference.
      num_passes: P; pass 0 uses `linear{1,2}`, pass 1 (stage-2 'active' queries) `linear{1,2}_active`.
      train: dropout on.

    Returns:
      [P*B, Q, d] the layer output (before the decoder's shared final LayerNorm).
    """
    cfg = self.config
    heads = cfg.nheads
    det = not train
    # Self-attention: q/k = content + pos, separate projections, no in-projection inside the attention.
    q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
    k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
    v = self.sa_v_proj(tgt)
    tgt = self.norm1(tgt + self.drop(self.self_attn(q, k, v, train=train), deterministic=det))

    # Cross-attention: per head, [content_h, sine_h] queries against [content_h, kpos_h] keys.
    q_content = self.ca_qcontent_proj(tgt)
    tile = lambda x: jnp.tile(x, (num_passes,) + (1,) * (x.ndim - 1))  # [B, ...] -> [P*B, ...]
    k_content = tile(self.ca_kcontent_proj(memory))
    v = tile(self.ca_v_proj(memory))
    k_pos = tile(self.ca_kpos_proj(pos))
    if self.is_first:
      q = q_content + self.ca_qpos_proj(query_pos)
      k = k_content + k_pos
    else:
      q, k = q_content, k_content
    sine = self.ca_qpos_sine_proj(query_sine_embed)
    q = _concat_per_head(q, sine, heads)  # [B, Q, 2d]
    k = _concat_per_head(k, k_pos, heads)  # [B, L, 2d]
    attended = self.cross_attn(q, k, v, key_valid=tile(memory_valid), train=train)
    tgt = self.norm2(tgt + self.drop(attended, deterministic=det))

    # FFN: original weights for pass 0, the 'active' copies for pass 1; the PReLU is shared.
    ffns = [(self.linear1, self.linear2)]
    if num_passes > 1:
      ffns.append((self.linear1_active, self.linear2_active))
    per_pass = jnp.split(tgt, num_passes, axis=0)
    y = jnp.concatenate([
        linear2(self.drop(self.activation(linear1(x)), deterministic=det))
        for x, (linear1, linear2) in zip(per_pass, ffns)], axis=0)
    return self.norm3(tgt + self.drop(y, deterministic=det))


def _concat_per_head(a: Array, b: Array, num_heads: int) -> Array:
  """[B, L, d] x [B, L, d] -> [B, L, 2d] laid out as head h = [a_h, b_h] (PyTorch view+cat+view)."""
  cat = jnp.concatenate([layers.split_heads(a, num_heads), layers.split_heads(b, num_heads)], axis=-1)
  return layers.merge_heads(cat)


class Decoder(nn.Module):
  """The 4-layer (dec_layers) anchor decoder with iterative (cx, w) refinement and the shared final LayerNorm."""
  config: AMRModelConfig

  def setup(self):
    cfg = self.config
    d, dtype = cfg.hidden_dim, cfg.compute_dtype
    self.layers = [DecoderLayer(cfg, is_first=i == 0) for i in range(cfg.dec_layers)]
    self.norm = layers.layer_norm(cfg.layer_norm_eps)
    xavier = layers.xavier_uniform
    self.query_scale = layers.MLP(d, d, 2, kernel_init=xavier, dtype=dtype)
    self.ref_point_head = layers.MLP(d, d, 2, kernel_init=xavier, dtype=dtype)
    # The original zero-inits this MLP's last layer, then the transformer-wide xavier re-init overrides the
    # weight; the bias stays 0.
    self.bbox_embed = layers.MLP(d, 2, 3, kernel_init=xavier, last_bias_init=nn.initializers.zeros_init(),
                                 dtype=dtype)
    self.ref_anchor_head = layers.MLP(d, 1, 2, kernel_init=xavier, dtype=dtype)

  def __call__(self, tgt: Array, memory: Array, memory_valid: Array, pos: Array, anchors: Array, *,
               num_passes: int, train: bool) -> dict[str, Array]:
    """Runs all layers for P query passes (same anchors and content queries; pass 1 uses the active FFNs).

    The original runs the decoder once per pass; the passes never interact, so they are folded into the batch
    here (one graph instead of P, same numbers).

    Args:
      tgt: [B, Q, d] initial content queries (the sentence feature).
      memory: [B, L, d].
      memory_valid: [B, L].
      pos: [B, L, d].
      anchors: [Q, 2] unsigmoided (cx, w) anchors.
      num_passes: P (1, or 2 in stage 2).
      train: dropout on.

    Returns:
      'hs' [Ld, P, B, Q, d] (post final LayerNorm), 'references' [Ld, P, B, Q, 2] (layer 0: sigmoid(anchor);
      layer l>0: the non-detached refined point of layer l-1), 'layer_out_prenorm' [Ld, P, B, Q, d].
    """
    cfg = self.config
    batch = tgt.shape[0]
    output = jnp.tile(tgt, (num_passes, 1, 1))  # [P*B, Q, d]
    reference = jax.nn.sigmoid(jnp.broadcast_to(anchors[None], (num_passes * batch,) + anchors.shape))
    references = [reference]
    hs, prenorm = [], []
    for layer_id, layer in enumerate(self.layers):
      sine = layers.query_sine_embedding(reference, cfg.hidden_dim, cfg.pos_temperature)  # [B, Q, d]
      query_pos = self.ref_point_head(sine)
      if layer_id > 0:
        sine = sine * self.query_scale(output)
      # modulate_t_attn: one scalar per query for the whole sine embedding.
      ref_width_cond = jax.nn.sigmoid(self.ref_anchor_head(output))  # [B, Q, 1]
      sine = sine * (ref_width_cond[..., 0] / reference[..., 1])[..., None]
      output = layer(output, memory, memory_valid, pos, query_pos, sine, num_passes=num_passes, train=train)
      new_reference = jax.nn.sigmoid(self.bbox_embed(output) + layers.inverse_sigmoid(
          reference, cfg.inverse_sigmoid_eps))
      if layer_id != cfg.dec_layers - 1:
        references.append(new_reference)  # not detached: used by the span prediction of the next layer
      reference = jax.lax.stop_gradient(new_reference)
      prenorm.append(output)
      hs.append(self.norm(output))
    unfold = lambda xs: jnp.stack(xs).reshape((len(xs), num_passes, batch) + xs[0].shape[1:])
    return {'hs': unfold(hs), 'references': unfold(references), 'layer_out_prenorm': unfold(prenorm)}


class Transformer(nn.Module):
  """Container of the T2V encoder, the (twice-applied) encoder and the decoder; param scope `transformer`."""
  config: AMRModelConfig

  def setup(self):
    self.t2v_encoder = T2VEncoder(self.config)
    self.encoder = Encoder(self.config)
    self.decoder = Decoder(self.config)

  def text_to_video(self, *args, train: bool) -> Array:
    return self.t2v_encoder(*args, train=train)

  def encode(self, x: Array, valid: Array, pos: Array, *, train: bool) -> Array:
    return self.encoder(x, valid, pos, train=train)

  def decode(self, *args, num_passes: int, train: bool) -> dict[str, Array]:
    return self.decoder(*args, num_passes=num_passes, train=train)


# ----------------------------------------------------------------------------------------------------------------
# The model.

HEAD_OUTPUT_KEYS = ('pred_logits', 'pred_spans', 'iou_scores', 'pred_masks')


class AMR(nn.Module):
  """AMR: input projections, VSL fuser, T2V, encoder, HD2MR, anchor decoder, heads (class, span, IoU, mask).

  Outputs of `__call__` (Q = config.total_queries, Ld = dec_layers, B batch, Lv/Lt lengths, d hidden):
    pred_logits [B, Q, 2] (index 0 = foreground), pred_spans [B, Q, 2] sigmoid (cx, w), iou_scores [B, Q, 1]
    logits, pred_masks [B, Q, Lv] (layer Ld-2 with `final_masks_from_layer2`, else the last layer),
    aux_outputs: list of Ld-1 dicts with those 4 keys (layer i, its own masks), saliency_scores [B, Lv],
    video_mask [B, Lv], hs [Ld, B, num_queries, d] (pass A), hs_all [Ld, B, Q, d], src_txt_ed [B, Lt, d],
    src_vid_ed [B, Lv, d], src_vid_cls_ed [B, d], src_txt_cls_ed [B, d], and
    inter: {vid_proj, txt_proj, fuser_out, pos_vid, t2v_out_vid, enc_pass1_memory, saliency_proj1_out,
    enc_pass2_memory_local, hs_all, references_all, mask_head_out, 'decoder_pass{p}.layer_out_prenorm'}
    (the fixture's `inter.*` names without the prefix; p = 0, and 1 in stage 2).
  """
  config: AMRModelConfig

  def setup(self):
    cfg = self.config
    d, dtype = cfg.hidden_dim, cfg.compute_dtype
    self.input_vid_proj = InputProjection(cfg, cfg.input_dropout)
    self.input_txt_proj = InputProjection(cfg, cfg.input_dropout)
    self.fuser = VSLFuser(cfg)
    self.txt_position_embed = TrainablePositionalEncoding(cfg)
    self.transformer = Transformer(cfg)
    self.saliency_proj1 = layers.Linear(d, dtype=dtype)
    self.mask_head = layers.MLP(d, d, 3, dtype=dtype)
    self.span_embed = layers.MLP(d, 2, 3, dtype=dtype)
    self.class_embed = layers.Linear(2, dtype=dtype)
    self.iou_head = layers.Linear(1, dtype=dtype)
    anchor_init = nn.initializers.normal(1.0)
    self.query_embed = self.param('query_embed', anchor_init, (cfg.num_queries, 2), jnp.float32)
    if cfg.is_distill:
      self.new_query_embed = self.param('new_query_embed', anchor_init, (cfg.num_queries, 2), jnp.float32)
    self.logit_scale = self.param('logit_scale', nn.initializers.constant(cfg.logit_scale_init), (),
                                  jnp.float32)

  def __call__(self, src_vid: Array, src_vid_mask: Array, src_txt: Array, src_txt_mask: Array, *,
               train: bool, pass_a_only: bool = False) -> dict[str, Any]:
    """Forward pass.

    Args:
      src_vid: [B, Lv, v_feat_dim] video features (TEF included).
      src_vid_mask: [B, Lv] 1 = valid clip.
      src_txt: [B, Lt, t_feat_dim] text token features.
      src_txt_mask: [B, Lt] 1 = valid token.
      train: dropout on (needs a 'dropout' rng).
      pass_a_only: stage 2 only: skip pass B (the stage-2 teacher's pass B is discarded by the loss); the outputs
        then have Q = num_queries. Do not use it for `init` (the active FFN params would not be created).

    Returns:
      The output dict described in the class docstring.
    """
    cfg = self.config
    f32 = jnp.float32
    video_valid = src_vid_mask > 0  # [B, Lv]
    text_valid = src_txt_mask > 0  # [B, Lt]
    vid = self.input_vid_proj(src_vid, train=train).astype(f32)  # [B, Lv, d]
    txt = self.input_txt_proj(src_txt, train=train).astype(f32)  # [B, Lt, d]
    if self.is_initializing():
      self.txt_position_embed(txt)  # creates the unused params; AMR uses zero text positions

    # Sentence feature = last valid token (the original's flip+argmax; all-padding rows give Lt-1).
    text_len = txt.shape[1]
    eos_idx = text_len - 1 - jnp.argmax(jnp.flip(src_txt_mask, axis=1), axis=1)  # [B]
    sentence = jnp.take_along_axis(txt, eos_idx[:, None, None], axis=1)[:, 0]  # [B, d]
    if cfg.vtc_mean_includes_padding:
      vid_cls = jnp.mean(vid, axis=1)
    else:
      weights = video_valid.astype(f32)[:, :, None]
      vid_cls = jnp.sum(vid * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)

    fused = self.fuser(vid, txt, src_vid_mask, src_txt_mask, train=train).astype(f32)  # [B, Lv, d]
    pos_vid = layers.sine_position_encoding(src_vid_mask, cfg.hidden_dim, cfg.pos_temperature)  # [B, Lv, d]

    t2v_out = self.transformer.text_to_video(fused, video_valid, pos_vid, txt, text_valid, train=train)
    memory = self.transformer.encode(t2v_out, video_valid, pos_vid, train=train)  # [B, Lv, d]

    # HD2MR: clip saliency, softmax weights over clips, re-encode memory + weighted T2V output.
    saliency_proj = self.saliency_proj1(memory).astype(f32)  # [B, Lv, d]
    saliency_scores = jnp.sum(saliency_proj, axis=-1) / math.sqrt(cfg.hidden_dim)  # [B, Lv]
    if cfg.hd2mr_unmasked_softmax:
      clip_weights = jax.nn.softmax(saliency_scores, axis=-1)
    else:
      clip_weights = jax.nn.softmax(
          jnp.where(video_valid, saliency_scores, jnp.finfo(f32).min), axis=-1)
    memory_local = self.transformer.encode(memory + t2v_out * clip_weights[:, :, None], video_valid, pos_vid,
                                           train=train)  # [B, Lv, d]

    # Decoder: content queries start from the sentence feature.
    num_q = cfg.num_queries
    tgt = jnp.broadcast_to(sentence[:, None, :], (sentence.shape[0], num_q, cfg.hidden_dim))  # [B, q, d]
    anchors = self.new_query_embed if cfg.is_distill else self.query_embed
    num_passes = 2 if (cfg.is_distill and not pass_a_only) else 1
    decoded = self.transformer.decode(tgt, memory_local, video_valid, pos_vid, anchors, num_passes=num_passes,
                                      train=train)
    join_passes = lambda x: jnp.concatenate([x[:, p] for p in range(num_passes)], axis=2)  # queries: A, then B
    hs_all = join_passes(decoded['hs'])  # [Ld, B, Q, d]
    references = join_passes(decoded['references'])  # [Ld, B, Q, 2]

    # Heads, applied to every decoder layer.
    logits = self.class_embed(hs_all).astype(f32)  # [Ld, B, Q, 2]
    iou_scores = self.iou_head(hs_all).astype(f32)  # [Ld, B, Q, 1]
    mask_head_out = self.mask_head(hs_all).astype(f32)  # [Ld, B, Q, d]
    query_norm = layers.l2_normalize(hs_all + mask_head_out)
    video_norm = layers.l2_normalize(memory_local)  # [B, Lv, d]
    cosine = jnp.einsum('lbqd,bkd->lbqk', query_norm, video_norm,
                        precision=layers.matmul_precision(f32))  # [Ld, B, Q, Lv]
    masks = jax.nn.sigmoid(jnp.exp(self.logit_scale) * cosine)
    spans = jax.nn.sigmoid(self.span_embed(hs_all).astype(f32)
                           + layers.inverse_sigmoid(references, cfg.inverse_sigmoid_eps))  # [Ld, B, Q, 2]

    final_mask_layer = cfg.dec_layers - 2 if cfg.final_masks_from_layer2 else cfg.dec_layers - 1
    out: dict[str, Any] = {
        'pred_logits': logits[-1],
        'pred_spans': spans[-1],
        'iou_scores': iou_scores[-1],
        'pred_masks': masks[final_mask_layer],
        'aux_outputs': [
            {'pred_logits': logits[i], 'pred_spans': spans[i], 'pred_masks': masks[i],
             'iou_scores': iou_scores[i]} for i in range(cfg.dec_layers - 1)],
        'saliency_scores': saliency_scores,
        'video_mask': src_vid_mask,
        'hs': hs_all[:, :, :num_q],
        'hs_all': hs_all,
        'src_txt_ed': txt,
        'src_vid_ed': vid,
        'src_vid_cls_ed': vid_cls,
        'src_txt_cls_ed': sentence,
    }
    inter = {
        'vid_proj': vid, 'txt_proj': txt, 'fuser_out': fused, 'pos_vid': pos_vid, 't2v_out_vid': t2v_out,
        'enc_pass1_memory': memory, 'saliency_proj1_out': saliency_proj,
        'enc_pass2_memory_local': memory_local, 'hs_all': hs_all, 'references_all': references,
        'mask_head_out': mask_head_out,
    }
    for p in range(num_passes):
      inter[f'decoder_pass{p}.layer_out_prenorm'] = decoded['layer_out_prenorm'][:, p]
    out['inter'] = inter
    return out
