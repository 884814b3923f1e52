"""AMDNet network (TMM 2025, "Active Moment Discovering" for PRVR) in Flax linen, exact to the PyTorch reference.

Clip pooling, span anchors -> Gaussian moment masks, masked multi-moment attention, max-over-clips cosine scores.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.ops import layers

Array = jax.Array

_CHOICES = {
    'clip_avg': ('repo', 'inclusive'),
    'moment_mask': ('multiply', 'log_add'),
    'mask_norm': ('max', 'sum', 'density'),
    't_grid': ('linspace', 'centers'),
    'moment_pool': ('sum', 'mean'),
    'score_mode': ('clip', 'moment'),
}
QUIRK_FIELDS = ('clip_avg', 'moment_mask', 'mask_norm', 'mask_nan_guard', 't_grid', 'moment_pool',
                'share_query_dropout')


@dataclasses.dataclass(frozen=True)
class AMDNetConfig:
  """Every size, constant and switch of the AMDNet network. Defaults: the released TVR cfg (`Configs/tvr.py`).

  Attributes:
    video_dim: clip (frame) feature width Dv (512: CLIP ViT-B/32 as released).
    text_dim: sentence feature width Dq (512).
    hidden_size: model width d (384 TVR, 256 ActivityNet / Charades).
    n_heads: attention heads; must equal `event_size` (head h of the masked attention uses moment h).
    event_size: moments (span anchors) H per video.
    map_size: clips N per video after `average_to_fixed_length`.
    max_ctx_l: rows of the learned position table (only the first N are used).
    input_drop: dropout of both input projections and of the position embedding.
    drop: dropout on the attention probabilities and after each attention's dense layer.
    initializer_range: std of the repo init of Linear / Embedding weights.
    layer_norm_eps: every LayerNorm's epsilon (PyTorch default).
    normalize_eps: `F.normalize` epsilon of the cosine scores.
    sigma_divisor: s_h = max(w_h, width_clamp_min) / sigma_divisor (hard-coded 9).
    width_clamp_min: lower clamp of the width before the division (hard-coded 0.01).
    gauss_prefactor: 1/sqrt(2 pi), the density prefactor (cancels under the max normalisation).
    dropout_impl: dropout mask generator, see `layers.keep_mask`.
    score_mode: 'clip' = max over the N attended clip tokens (repo); 'moment' = max over the H moment
      features P_h (spec open question 2, the third-party reading), for the NCE and the retrieval score.
    clip_avg: quirk 2. 'repo' = bounds round-half-even(i F / N) with the last bound clamped to F-1 (the last
      frame is dropped); 'inclusive' = no clamp, the last clip ends at frame F.
    moment_mask: quirk 3. 'multiply' = the masked attention's logits are multiplied by M (repo);
      'log_add' = log M is added (masked keys get -inf, a true restriction).
    mask_norm: quirk 4. 'max' = M = g / max_n g (peak 1, repo); 'sum' = g / sum_n g; 'density' = raw g.
    mask_nan_guard: quirk 5. False = the repo's formula, NaN when every clip underflows; True = the same
      mask computed in log space (never 0/0).
    t_grid: quirk 6. 'linspace' = t_n = n/(N-1) as torch.linspace (repo); 'centers' = (n + 1/2)/N.
    moment_pool: quirk 8. 'sum' = P = M V (repo, mask-weighted sums); 'mean' = P = (M / sum M) V.
    share_query_dropout: quirk 10. False = the query projection runs twice in training (the relevance loss
      sees another dropout mask than the NCE, repo); True = one call feeds both.
  """
  video_dim: int = 512
  text_dim: int = 512
  hidden_size: int = 384
  n_heads: int = 4
  event_size: int = 4
  map_size: int = 32
  max_ctx_l: int = 128
  input_drop: float = 0.2
  drop: float = 0.2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-5
  normalize_eps: float = 1e-12
  sigma_divisor: float = 9.0
  width_clamp_min: float = 0.01
  gauss_prefactor: float = 0.3989422804014327
  dropout_impl: str = 'hash'
  score_mode: str = 'clip'
  clip_avg: str = 'repo'
  moment_mask: str = 'multiply'
  mask_norm: str = 'max'
  mask_nan_guard: bool = False
  t_grid: str = 'linspace'
  moment_pool: str = 'sum'
  share_query_dropout: bool = False

  def __post_init__(self):
    problems = []
    for field, allowed in _CHOICES.items():
      if getattr(self, field) not in allowed:
        problems.append(f'{field}={getattr(self, field)!r} (expected one of {", ".join(allowed)})')
    if self.n_heads != self.event_size:
      problems.append(f'n_heads={self.n_heads} must equal event_size={self.event_size} (head h uses moment h)')
    if self.hidden_size % self.n_heads:
      problems.append(f'hidden_size={self.hidden_size} is not a multiple of n_heads={self.n_heads}')
    if self.map_size > self.max_ctx_l:
      problems.append(f'map_size={self.map_size} exceeds the position table max_ctx_l={self.max_ctx_l}')
    if self.map_size < 2 and self.t_grid == 'linspace':
      problems.append(f'map_size={self.map_size}: torch.linspace(0, 1, N) needs N >= 2')
    if problems:
      raise ValueError('AMDNetConfig: ' + '; '.join(problems))

  @property
  def head_size(self) -> int:
    return self.hidden_size // self.n_heads

  def replace(self, **changes) -> 'AMDNetConfig':
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_configs(cls, model_cfg: Mapping[str, Any], quirks_cfg: Mapping[str, Any], video_dim: int,
                   text_dim: int) -> 'AMDNetConfig':
    """From `configs/amdnet.py`'s `config.model` and `config.quirks` plus the feature widths of the data.

    Raises ValueError naming every bad field (one line)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: model_cfg[k] for k in model_cfg.keys() if k in names}
    kwargs.update({k: quirks_cfg[k] for k in QUIRK_FIELDS if k in quirks_cfg})
    kwargs.update(video_dim=int(video_dim), text_dim=int(text_dim))  # the data's widths win over the config's
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------------
# Pure pieces
# ----------------------------------------------------------------------------------------------------
def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
  """`torch.linspace(start, end, steps)` in float32, bit for bit (CPU kernel: the first half counts up from
  `start`, the second half down from `end`, with the step computed in float32)."""
  start32, end32 = np.float32(start), np.float32(end)
  if steps == 1:
    return np.array([start32], np.float32)
  step = np.float32((end32 - start32) / np.float32(steps - 1))
  idx = np.arange(steps)
  halfway = steps // 2
  up = start32 + step * idx.astype(np.float32)
  down = end32 - step * (steps - idx - 1).astype(np.float32)
  return np.where(idx < halfway, up, down).astype(np.float32)


def clip_positions(config: AMDNetConfig) -> np.ndarray:
  """t_n of the N clips [N] float32: torch.linspace(0, 1, N) (quirk 6) or the clip centres (n + 1/2)/N."""
  n = config.map_size
  if config.t_grid == 'linspace':
    return torch_linspace(0.0, 1.0, n)
  return ((np.arange(n, dtype=np.float32) + np.float32(0.5)) / np.float32(n)).astype(np.float32)


# GENERIC-OP: MS-SL / GMMFormer / AMDNet `average_to_fixed_length` as a fixed-shape batched op.
def average_to_fixed_length(frames: Array, frame_mask: Array, num_clips: int, mode: str = 'repo') -> Array:
  """Average a padded frame sequence into `num_clips` clips, as the PRVR repos' `average_to_fixed_length`.

  Per video with F = sum(frame_mask) frames (the valid frames must come first): bounds
  b_i = round_half_even(float32(i / N) * F), i = 0..N; mode 'repo' clamps them to F - 1 (so the last frame is
  dropped), mode 'inclusive' does not. Clip i is the mean of frames b_i .. b_(i+1) - 1, or the single frame
  b_i when that range is empty. Padded frames (mask 0) never contribute, whatever their values.

  Args:
    frames: [B, L, D] frame features, zero or garbage after the valid ones.
    frame_mask: [B, L] 1 = valid frame.
    num_clips: N.
    mode: 'repo' | 'inclusive'.

  Returns:
    [B, N, D] float32. A row with no valid frame is treated as F = 1 (its first, zeroed, frame).
  """
  length = frames.shape[1]
  valid = frame_mask > 0
  frames = jnp.where(valid[..., None], frames, jnp.zeros((), frames.dtype)).astype(jnp.float32)
  count = jnp.maximum(jnp.sum(valid, axis=1).astype(jnp.int32), 1)  # [B] F
  ratio = np.arange(num_clips + 1, dtype=np.float32) / np.float32(num_clips)  # [N+1], as torch in float32
  bounds = jnp.round(ratio[None, :] * count[:, None].astype(jnp.float32)).astype(jnp.int32)  # [B, N+1]
  if mode == 'repo':
    bounds = jnp.minimum(bounds, count[:, None] - 1)
  elif mode != 'inclusive':
    raise ValueError(f'unknown clip_avg mode {mode!r}; expected "repo" or "inclusive"')
  start, end = bounds[:, :-1, None], bounds[:, 1:, None]  # [B, N, 1]
  frame_idx = jnp.arange(length, dtype=jnp.int32)[None, None, :]  # [1, 1, L]
  nonempty = start < end
  single = jnp.minimum(start, count[:, None, None] - 1)
  member = jnp.where(nonempty, (frame_idx >= start) & (frame_idx < end), frame_idx == single)  # [B, N, L]
  sums = jnp.einsum('bnl,bld->bnd', member.astype(jnp.float32), frames,
                    precision=jax.lax.Precision.HIGHEST)
  sizes = jnp.where(nonempty, end - start, 1).astype(jnp.float32)  # [B, N, 1]
  return sums / sizes


def gaussian_moment_masks(centres: Array, widths: Array, t_grid: np.ndarray, config: AMDNetConfig) -> Array:
  """Moment masks M [B, H, N] from span anchors (repo `generate_v_gauss_weight`).

  s = max(w, width_clamp_min) / sigma_divisor; g = (prefactor / s) exp(-(t - c)^2 / (2 s^2)), then normalised
  by `config.mask_norm` ('max' = the repo's peak-1 masks). With `mask_nan_guard` the same masks are computed in
  log space, so an all-underflow row gives a finite mask instead of 0/0.

  Args:
    centres: [B, H] in (0, 1).
    widths: [B, H] in (0, 1).
    t_grid: [N] clip positions.
    config: the network config.
  """
  t = jnp.asarray(t_grid, jnp.float32)
  sigma = jnp.maximum(widths, jnp.float32(config.width_clamp_min)) / jnp.float32(config.sigma_divisor)
  sigma = sigma[..., None]  # [B, H, 1]
  exponent = -jnp.square(t - centres[..., None]) / (2 * jnp.square(sigma))  # [B, H, N]
  prefactor = jnp.float32(config.gauss_prefactor) / sigma
  if config.mask_nan_guard and config.mask_norm in ('max', 'sum'):
    if config.mask_norm == 'max':  # g / max g = exp(e - max e): the prefactor cancels, no 0/0
      return jnp.exp(exponent - jnp.max(exponent, axis=-1, keepdims=True))
    return jax.nn.softmax(exponent, axis=-1)
  density = prefactor * jnp.exp(exponent)
  if config.mask_norm == 'max':
    return density / jnp.max(density, axis=-1, keepdims=True)
  if config.mask_norm == 'sum':
    return density / jnp.sum(density, axis=-1, keepdims=True)
  return density


def clip_scores(query_emb: Array, tokens: Array, *, normalize: bool, eps: float = 1e-12) -> tuple:
  """Scores of Q queries against V videos' tokens: (max over tokens [Q, V], per token [Q, T, V]).

  normalize=True: cosine (`F.normalize` on both sides; the retrieval score); False: raw dot (the NCE logits).

  Args:
    query_emb: [Q, d].
    tokens: [V, T, d] (the N clip tokens, or the H moment features in score_mode 'moment').
  """
  if normalize:
    query_emb = layers.l2_normalize(query_emb, eps)
    tokens = layers.l2_normalize(tokens, eps)
  per_token = jnp.einsum('qd,vtd->qtv', query_emb, tokens, precision=jax.lax.Precision.HIGHEST)
  return jnp.max(per_token, axis=1), per_token


def retrieval_tokens(video_out: Mapping[str, Array], config: AMDNetConfig) -> Array:
  """The tokens a video is scored by: the attended clip tokens Ṽ (repo) or the moment features P."""
  return video_out['clip_tokens'] if config.score_mode == 'clip' else video_out['moment_feat']


def score(query_emb: Array, video_tokens: Array, eps: float = 1e-12) -> Array:
  """Retrieval similarity [Q, V] = max over tokens of cos(q, token): one block of captions x videos."""
  return clip_scores(query_emb, video_tokens, normalize=True, eps=eps)[0]


# ----------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------
def _linear(features: int, name: str) -> layers.Linear:
  return layers.Linear(features, name=name)


# GENERIC-OP: attention whose logits are exposed and optionally multiplied / log-masked along the keys.
def moment_masked_attention(query: Array, key: Array, value: Array, *, key_weights: Optional[Array],
                            mode: str = 'multiply', dropout_rate: float = 0.0,
                            dropout_rng: Optional[Array] = None, dropout_impl: str = 'hash') -> dict:
  """BERT self-attention on head-split inputs with a per-head key weighting (the masked multi-moment attention).

  logits = (Q_h K_h^T) / sqrt(dh) (scaled after the product, as the repo); with `key_weights` W [B, H, S]
  mode 'multiply' gives logits[b, h, i, j] * W[b, h, j] (the repo: a zero weight leaves logit 0 in the
  softmax) and 'log_add' gives logits + log W (zero weight = excluded). Softmax over keys, dropout on the
  probabilities, context = probs V.

  Args:
    query, key, value: [B, T|S, H, dh].
    key_weights: [B, H, S] or None (plain attention).

  Returns:
    {'logits' [B, H, T, S], 'logits_masked' (= logits without key_weights), 'probs', 'context' [B, T, H*dh]}.
  """
  precision = jax.lax.Precision.HIGHEST
  logits = jnp.einsum('bthd,bshd->bhts', query, key, precision=precision)
  logits = logits / jnp.float32(math.sqrt(query.shape[-1]))
  masked = logits
  if key_weights is not None:
    weights = key_weights[:, :, None, :]
    if mode == 'multiply':
      masked = logits * weights
    elif mode == 'log_add':
      safe = jnp.where(weights > 0, weights, 1.0)
      masked = jnp.where(weights > 0, logits + jnp.log(safe), jnp.float32(-1e30))
    else:
      raise ValueError(f'unknown moment_mask {mode!r}; expected "multiply" or "log_add"')
  probs = jax.nn.softmax(masked, axis=-1)
  dropped = layers.dropout(probs, dropout_rate, dropout_rng, dropout_impl)  # identity when dropout_rng is None
  context = jnp.einsum('bhts,bshd->bthd', dropped, value, precision=precision)
  return {'logits': logits, 'logits_masked': masked, 'probs': probs, 'context': layers.merge_heads(context)}


class BertSelfAttention(nn.Module):
  """The repo's BertSelfAttention: `query`, `key`, `value` Linear layers + `moment_masked_attention`."""
  config: AMDNetConfig

  @nn.compact
  def __call__(self, x: Array, key_weights: Optional[Array], *, train: bool) -> dict:
    cfg = self.config
    d, h = cfg.hidden_size, cfg.n_heads
    q = layers.split_heads(_linear(d, 'query')(x), h)  # [B, N, H, dh]
    k = layers.split_heads(_linear(d, 'key')(x), h)
    v = layers.split_heads(_linear(d, 'value')(x), h)
    rng = self.make_rng('dropout') if (train and cfg.drop > 0.0) else None
    return moment_masked_attention(q, k, v, key_weights=key_weights, mode=cfg.moment_mask, dropout_rate=cfg.drop,
                                   dropout_rng=rng, dropout_impl=cfg.dropout_impl)


class BertAttention(nn.Module):
  """The repo's BertAttention: self-attention (`self`) then `output` = LN(dropout(dense(context)) + x)."""
  config: AMDNetConfig

  @nn.compact
  def __call__(self, x: Array, key_weights: Optional[Array] = None, *, train: bool) -> tuple:
    cfg = self.config
    attn = BertSelfAttention(cfg, name='self')(x, key_weights, train=train)
    out = BertSelfOutput(cfg, name='output')(attn['context'], x, train=train)
    return out, attn


class BertSelfOutput(nn.Module):
  """`dense` -> dropout -> `LayerNorm`(hidden + residual); no feed-forward."""
  config: AMDNetConfig

  @nn.compact
  def __call__(self, hidden: Array, residual: Array, *, train: bool) -> Array:
    cfg = self.config
    hidden = _linear(cfg.hidden_size, 'dense')(hidden)
    hidden = layers.Dropout(cfg.drop, deterministic=not train, impl=cfg.dropout_impl)(hidden)
    return layers.layer_norm(cfg.layer_norm_eps, 'LayerNorm')(hidden + residual)


class Clip2Video(nn.Module):
  """The repo's `avgpooling`: v̄ = fc_out1(layernorm(mean over clips)). Returns (pooled mean, v̄)."""
  config: AMDNetConfig

  @nn.compact
  def __call__(self, v: Array) -> tuple:
    cfg = self.config
    pooled = jnp.mean(v, axis=1)  # [B, d] (AvgPool1d with kernel = stride = N)
    normed = layers.layer_norm(cfg.layer_norm_eps, 'layernorm')(pooled)
    return pooled, _linear(cfg.hidden_size, 'fc_out1')(normed)


class MomentBlock(nn.Module):
  """The repo's `GMMBlock`: span anchors -> Gaussian masks, moment features, attn0 -> masked attn1, (o0 + o1)/2."""
  config: AMDNetConfig

  @nn.compact
  def __call__(self, v: Array, *, train: bool) -> dict:
    cfg = self.config
    b, e = v.shape[0], cfg.event_size
    pooled, global_vec = Clip2Video(cfg, name='clip2video')(v)  # [B, d]
    gauss_logits = _linear(2 * e, 'fc_gauss')(global_vec)  # [B, 2H], interleaved (c_0, w_0, c_1, w_1, ...)
    anchors = jax.nn.sigmoid(gauss_logits.reshape(b, e, 2))  # quirk 7
    centres, widths = anchors[..., 0], anchors[..., 1]  # [B, H]
    masks = gaussian_moment_masks(centres, widths, clip_positions(cfg), cfg)  # [B, H, N]
    pool = masks if cfg.moment_pool == 'sum' else masks / jnp.sum(masks, axis=-1, keepdims=True)
    moment_feat = jnp.einsum('bhn,bnd->bhd', pool, v, precision=jax.lax.Precision.HIGHEST)  # [B, H, d]
    o0, attn0 = BertAttention(cfg, name='attn0')(v, None, train=train)
    o1, attn1 = BertAttention(cfg, name='attn1')(o0, masks, train=train)  # quirk 9: chained on o0
    return {
        'pooled_mean': pooled, 'global_vec': global_vec, 'gauss_logits': gauss_logits, 'centres': centres,
        'widths': widths, 'gauss_masks': masks, 'moment_feat': moment_feat,
        'attn0.logits': attn0['logits'], 'attn0.probs': attn0['probs'], 'attn0.context': attn0['context'],
        'o0': o0,
        'attn1.logits_unmasked': attn1['logits'], 'attn1.logits_masked': attn1['logits_masked'],
        'attn1.probs': attn1['probs'], 'attn1.context': attn1['context'], 'o1': o1,
        'clip_tokens': (o0 + o1) / 2,
    }


class ClipPositionEmbedding(nn.Module):
  """The repo's TrainablePositionalEncoding: LN(x + table[0:N]) -> dropout; params `position_embeddings`
  [max_ctx_l, d] and `LayerNorm`."""
  config: AMDNetConfig

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    cfg = self.config
    table = self.param('position_embeddings', nn.initializers.normal(cfg.initializer_range),
                       (cfg.max_ctx_l, cfg.hidden_size), jnp.float32)
    x = layers.layer_norm(cfg.layer_norm_eps, 'LayerNorm')(x + table[:x.shape[1]])
    return layers.Dropout(cfg.input_drop, deterministic=not train, impl=cfg.dropout_impl)(x)


class AMDNet(nn.Module):
  """AMDNet (`GMMFormer_Net` in the repo). Batch-first, fixed padded shapes.

  Methods (pass with `method=` to `apply`): `encode_videos` (every video once), `encode_queries` (every
  caption once) and `__call__` (a training batch: both, per video b its C padded caption slots).
  """
  config: AMDNetConfig

  def setup(self):
    cfg = self.config
    self.clip_input_proj = layers.LinearLayer(cfg.hidden_size, dropout=cfg.input_drop, relu=True,
                                              layer_norm_eps=cfg.layer_norm_eps, dropout_impl=cfg.dropout_impl)
    self.query_input_proj = layers.LinearLayer(cfg.hidden_size, dropout=cfg.input_drop, relu=True,
                                               layer_norm_eps=cfg.layer_norm_eps, dropout_impl=cfg.dropout_impl)
    self.clip_pos_embed = ClipPositionEmbedding(cfg)
    self.clip_encoder = MomentBlock(cfg)

  def encode_videos(self, video_feat: Array, video_mask: Array, *, train: bool = False) -> dict:
    """Videos -> every video-side tensor.

    Args:
      video_feat: [B, L, Dv] frame features (L >= 1; L = N with an all-ones mask passes clips through).
      video_mask: [B, L] 1 = valid frame (valid frames first).
      train: dropout on.

    Returns:
      dict: 'clip_feat' [B, N, Dv] (pooled input), 'clip_proj', 'V' [B, N, d], 'pooled_mean', 'global_vec'
      [B, d], 'gauss_logits' [B, 2H], 'centres', 'widths' [B, H], 'gauss_masks' [B, H, N], 'moment_feat'
      [B, H, d], 'attn{0,1}.*' ([B, H, N, N] / [B, N, d]), 'o0', 'o1', 'clip_tokens' [B, N, d].
    """
    cfg = self.config
    clip_feat = average_to_fixed_length(video_feat, video_mask, cfg.map_size, cfg.clip_avg)  # [B, N, Dv]
    clip_proj = self.clip_input_proj(clip_feat, train=train)  # [B, N, d]
    v = self.clip_pos_embed(clip_proj, train=train)
    out = {'clip_feat': clip_feat, 'clip_proj': clip_proj, 'V': v}
    out.update(self.clip_encoder(v, train=train))
    return out

  def encode_queries(self, caption_feat: Array, caption_mask: Optional[Array] = None, *,
                     train: bool = False) -> Array:
    """Sentence vectors [..., Dq] -> query embeddings [..., d] (LN -> dropout -> Linear -> ReLU). Padded slots
    (caption_mask 0) are zeroed first, so their values never matter."""
    if caption_mask is not None:
      caption_feat = jnp.where(caption_mask[..., None] > 0, caption_feat, jnp.zeros((), caption_feat.dtype))
    return self.query_input_proj(caption_feat.astype(jnp.float32), train=train)

  def __call__(self, video_feat: Array, video_mask: Array, caption_feat: Array, caption_mask: Array, *,
               train: bool = False) -> dict:
    """A training batch: `encode_videos` outputs plus 'query_emb_first_call' (the NCE / score call) and
    'query_emb' (the relevance-loss call; another dropout mask in training unless share_query_dropout), both
    [B, C, d] for caption_feat [B, C, Dq], caption_mask [B, C]."""
    out = self.encode_videos(video_feat, video_mask, train=train)
    first = self.encode_queries(caption_feat, caption_mask, train=train)
    second = first
    if train and not self.config.share_query_dropout and self.config.input_drop > 0.0:
      second = self.encode_queries(caption_feat, caption_mask, train=train)  # quirk 10
    out['query_emb_first_call'] = first
    out['query_emb'] = second
    return out


# ----------------------------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------------------------
def repo_init(params: Any, rng: Array, initializer_range: float = 0.02) -> Any:
  """The repo's `reset_parameters`: Linear / Embedding weights N(0, initializer_range), Linear biases 0,
  LayerNorm weight 1 / bias 0 (applied to a freshly initialised Flax tree, leaf by leaf)."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  treedef = jax.tree_util.tree_structure(params)
  keys = jax.random.split(rng, max(len(flat), 1))
  leaves = []
  for (path, leaf), key in zip(flat, keys):
    names = [getattr(p, 'key', str(p)) for p in path]
    leaf_name, parent = names[-1], (names[-2] if len(names) > 1 else '')
    if parent.lower() == 'layernorm':
      leaves.append(jnp.ones_like(leaf) if leaf_name == 'scale' else jnp.zeros_like(leaf))
    elif leaf_name == 'bias':
      leaves.append(jnp.zeros_like(leaf))
    else:  # Linear kernels and the position table
      leaves.append(initializer_range * jax.random.normal(key, leaf.shape, leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def init_params(config: AMDNetConfig, rng: Array) -> Any:
  """Fresh params with the repo init, in one jitted program (the shapes do not depend on the batch: a 1-video,
  1-caption dummy batch builds them)."""
  model = AMDNet(config)

  def init(key):
    init_rng, reinit_rng = jax.random.split(key)
    video = jnp.zeros((1, config.map_size, config.video_dim), jnp.float32)
    text = jnp.zeros((1, 1, config.text_dim), jnp.float32)
    params = model.init({'params': init_rng, 'dropout': init_rng}, video, jnp.ones((1, config.map_size)), text,
                        jnp.ones((1, 1)), train=False)['params']
    return repo_init(params, reinit_rng, config.initializer_range)

  return jax.jit(init)(rng)


def param_shapes(config: AMDNetConfig) -> Any:
  """The params pytree as jax.ShapeDtypeStruct leaves (nothing is computed or compiled)."""
  return jax.eval_shape(lambda key: init_params(config, key), jax.random.PRNGKey(0))
