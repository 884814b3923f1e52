"""CPL network in Flax linen: input projections, DualTransformer, proposal head, Gaussian masks, reconstruction.

Exact to the PyTorch reference (`minghangz/cpl` @ cb7562a); every quirk is a `CPLModelConfig` field (default = it).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.ops import layers

Array = jax.Array

# 1 / sqrt(2 pi): the prefactor of the reference's Gaussian (it cancels in the max-normalisation).
INV_SQRT_2PI = 0.3989422804014327
END_TARGET_RULES = ('batch_max', 'always', 'never')
GAUSS_NORMALISATIONS = ('grid_max', 'grid_max_stable', 'analytic')
KEEP_IDX_RULES = ('float32_linspace', 'exact')


@dataclasses.dataclass(frozen=True)
class CPLModelConfig:
  """Every size and switch of the CPL network (defaults: the Charades-STA recipe, `config/charades/main.json`).

  Quirk fields reproduce the reference by default (fixture README §8, Q-numbers in brackets).

  Attributes:
    frame_dim: raw clip feature width (I3D 1024, C3D 500).
    word_dim: word embedding width (GloVe 300).
    hidden_size: model width d (`hidden_size` = `DualTransformer.d_model`).
    num_heads: attention heads.
    num_layers1: layers of decoder1 (the frame decoder).
    num_layers2: layers of decoder2 (the word decoder).
    ffn_multiplier: FFN width = ffn_multiplier * d (hard-coded 2 in the reference).
    num_props: Gaussian proposals K.
    vocab_size: output classes (top-K words + id 0).
    sigma: sigma divisor of the positive Gaussians (sigma = max(w, width_clamp) / this).
    neg_sigma_divisor: sigma divisor of the negative Gaussians (reference: sigma / 2).
    gamma: exponent of the negative schedule s = min(epoch / max_epoch, 1) ** gamma.
    max_epoch: E of the schedule (the run's number of epochs).
    use_negative: compute the left/right negatives and the reference pass (needed by L_ivc and L_rec).
    dropout: input dropout on the raw frame/word features (`config.dropout`).
    transformer_dropout: residual dropout after every sub-layer (`DualTransformer.dropout`).
    attention_dropout: dropout on the attention probabilities (0 in the reference) [Q5].
    downsample: decoding-2 clips L' = num_frames // downsample.
    width_clamp: widths clamp below at this before the sigma divisor [Q8].
    gauss_attn_eps: the attention probabilities are multiplied by (g + eps) and renormalised [Q7].
    key_padding_fill: logit given to padded keys (after the causal -inf) [Q6].
    layer_norm_eps: LayerNorm epsilon.
    dropout_impl: dropout mask generator (`layers.keep_mask`).
    decoder_unroll: layers per iteration of the scanned decoders (0 = fully unrolled). XLA:CPU sums less
      accurately inside a rolled loop (gradients 4x further from float64 on the fixture), so 0 is the default.
    pred_token_key_masked: the appended pred token is a padded key (it sees the clips, nobody sees it) [Q1].
    causal_frames: frame self-attention is causal in both decodings [Q2].
    causal_words: word self-attention is causal in both decodings [Q2].
    dropout_special_vectors: input dropout also hits `pred_vec` and `start_vec` [Q5].
    position_row0_zero: row 0 of the word positional table (the start token) is zero [Q4].
    position_freq_half_minus_one: frequencies exp(-i ln(1e4) / (half - 1)) (False: / half) [Q4].
    gauss_normalisation: 'grid_max' = (1/(sigma sqrt(2pi))) exp(..) / its max over the grid (reference; 0/0 if
      every grid point underflows), 'grid_max_stable' = the same normalisation in the log domain (never NaN),
      'analytic' = exp(-(t - c)^2 / 2 sigma^2) (peak 1 at c, not at the nearest grid point) [Q8, Q9].
    neg_width_is_centre: the left negative's width parameter is its centre and the right one's is 1 - centre
      (False: the free lengths max(c - w/2, 0) / max(1 - c - w/2, 0)) [Q10].
    detach_negative_masks: stop gradients through the negative masks (reference: not detached) [Q11].
    end_target: 'batch_max' = the decoder input drops the last slot and only sentences shorter than the batch
      maximum get an id-0 end target (reference); 'always' = every sentence gets one end target (input keeps
      all W + 1 slots); 'never' = targets are w1..w_len only [Q12, Q13].
    reference_downsampled: the reference (whole-video) pass uses the L' down-sampled clips (False: all clips) [Q15].
    decoding2_from_projected_frames: decoding 2 starts from `frame_fc` outputs (False: decoder1 states) [Q16].
    gauss_params_interleaved: `fc_gauss` outputs are (c0, w0, c1, w1, ..) (False: K centres then K widths) [Q17].
    keep_idx_rule: 'float32_linspace' = float32 linspace(0, n-1, L') truncated (the reference's scalar kernel),
      'exact' = floor(i (n-1) / (L'-1)) in integers (the two agree for n <= 65 and n = 200).
    decode_negatives: 'all' = the left / right negatives of every proposal are decoded (the reference);
      'kstar' = only those of k* (the proposal with the lowest NLL), the only ones the loss reads when
      `negatives_at_kstar` holds: the same loss and gradients, 2K + 1 -> 3 negative passes per sample.
  """
  frame_dim: int = 1024
  word_dim: int = 300
  hidden_size: int = 256
  num_heads: int = 4
  num_layers1: int = 3
  num_layers2: int = 3
  ffn_multiplier: int = 2
  num_props: int = 8
  vocab_size: int = 1112
  sigma: float = 9.0
  neg_sigma_divisor: float = 4.5
  gamma: float = 0.5
  max_epoch: int = 30
  use_negative: bool = True
  dropout: float = 0.1
  transformer_dropout: float = 0.1
  attention_dropout: float = 0.0
  downsample: int = 4
  width_clamp: float = 0.01
  gauss_attn_eps: float = 1e-10
  key_padding_fill: float = -1e30
  layer_norm_eps: float = 1e-5
  dropout_impl: str = 'hash'
  decoder_unroll: int = 0
  # Reference quirks.
  pred_token_key_masked: bool = True
  causal_frames: bool = True
  causal_words: bool = True
  dropout_special_vectors: bool = True
  position_row0_zero: bool = True
  position_freq_half_minus_one: bool = True
  gauss_normalisation: str = 'grid_max'
  neg_width_is_centre: bool = True
  detach_negative_masks: bool = False
  end_target: str = 'batch_max'
  reference_downsampled: bool = True
  decoding2_from_projected_frames: bool = True
  gauss_params_interleaved: bool = True
  keep_idx_rule: str = 'float32_linspace'
  decode_negatives: str = 'all'

  def __post_init__(self):
    problems = []
    if self.hidden_size % self.num_heads:
      problems.append(f'hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}')
    if self.end_target not in END_TARGET_RULES:
      problems.append(f'end_target {self.end_target!r} not in {END_TARGET_RULES}')
    if self.gauss_normalisation not in GAUSS_NORMALISATIONS:
      problems.append(f'gauss_normalisation {self.gauss_normalisation!r} not in {GAUSS_NORMALISATIONS}')
    if self.keep_idx_rule not in KEEP_IDX_RULES:
      problems.append(f'keep_idx_rule {self.keep_idx_rule!r} not in {KEEP_IDX_RULES}')
    if self.decode_negatives not in ('all', 'kstar'):
      problems.append(f"decode_negatives {self.decode_negatives!r} not in ('all', 'kstar')")
    if problems:
      raise ValueError('CPLModelConfig: ' + '; '.join(problems))

  @classmethod
  def from_config(cls, config, dims: Optional[dict] = None) -> 'CPLModelConfig':
    """From a run config (`config.model`, `config.quirks`) and data dims (frame_dim, word_dim, vocab_size)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for section in ('model', 'quirks'):
      if section in config:
        values.update({k: v for k, v in config[section].items() if k in fields})
    for key, value in (dims or {}).items():
      if key in fields:
        values[key] = value
    for key in ('num_props', 'frame_dim', 'word_dim', 'hidden_size', 'num_heads', 'num_layers1', 'num_layers2',
                'vocab_size', 'max_epoch', 'downsample', 'ffn_multiplier'):
      if key in values:
        values[key] = int(values[key])
    return cls(**values)

  @property
  def ffn_dim(self) -> int:
    return self.ffn_multiplier * self.hidden_size

  def num_decoder_words(self, max_words: int) -> int:
    """Decoder-2 input / target length for W word slots (the reference drops the last of the W + 1 slots)."""
    return max_words + 1 if self.end_target == 'always' else max_words


# ----------------------------------------------------------------------------------------------------------------
# Static tables (numpy, computed at trace time: fixed shapes, nothing recompiles).


def linspace_float32(start: float, end: float, steps: int) -> np.ndarray:
  """float32 `torch.linspace` (its scalar kernel: start + i*step below steps//2, end - (steps-1-i)*step above)."""
  if steps == 1:
    return np.array([start], np.float32)
  f32 = np.float32
  step = f32(f32(end) - f32(start)) / f32(steps - 1)
  idx = np.arange(steps)
  low = f32(start) + (step * idx.astype(np.float32)).astype(np.float32)
  high = f32(end) - (step * (steps - 1 - idx).astype(np.float32)).astype(np.float32)
  return np.where(idx < steps // 2, low, high).astype(np.float32)


def keep_indices(num_frames: int, num_kept: int, rule: str = 'float32_linspace') -> np.ndarray:
  """Down-sampling indices [L'] of the decoding-2 clips: linspace(0, n-1, L') truncated to integers."""
  if num_kept < 1:
    raise ValueError(f'decoding 2 needs at least one clip; got {num_frames} frames // downsample = {num_kept}')
  if rule == 'exact':
    if num_kept == 1:
      return np.zeros(1, np.int64)
    return (np.arange(num_kept) * (num_frames - 1)) // (num_kept - 1)
  return linspace_float32(0.0, float(num_frames - 1), num_kept).astype(np.int64)


# GENERIC-OP: the fairseq / tensor2tensor sinusoidal table (ops' sine_position_encoding is DETR's, interleaved).
def word_position_table(num_positions: int, dim: int, row0_zero: bool = True,
                        freq_half_minus_one: bool = True) -> np.ndarray:
  """fairseq sinusoidal table [P, dim]: row p = [sin(p f), cos(p f)], f_i = exp(-i ln(1e4) / (half - 1)).

  Sines fill the first half of the channels and cosines the second (not interleaved); an odd width gets a zero
  last column; row 0 (the padding index) is zero when `row0_zero`.
  """
  half = dim // 2
  denom = (half - 1) if freq_half_minus_one else half
  scale = math.log(10000) / max(denom, 1)
  freqs = np.exp(np.arange(half, dtype=np.float32) * np.float32(-scale)).astype(np.float32)
  angles = (np.arange(num_positions, dtype=np.float32)[:, None] * freqs[None, :]).astype(np.float32)
  table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)
  if dim % 2:
    table = np.concatenate([table, np.zeros((num_positions, 1), np.float32)], axis=1)
  if row0_zero:
    table[0] = 0.0
  return table


def causal_allowed(num_queries: int, num_keys: int) -> np.ndarray:
  """[T, S] bool: query i may attend key j <= i (the reference's triu(-inf, 1) future mask)."""
  return np.arange(num_keys)[None, :] <= np.arange(num_queries)[:, None]


# ----------------------------------------------------------------------------------------------------------------
# Gaussian masks and the negative schedule (pure functions; MCMT builds on them).


def gaussian_mask(grid: Array, center: Array, width: Array, sigma_divisor: float, width_clamp: float = 0.01,
                  normalisation: str = 'grid_max') -> Array:
  """Proposal Gaussians over the clip grid, normalised to a peak of 1.

  Args:
    grid: [L'] clip positions in [0, 1] (float32 linspace).
    center: [..., K] centres in [0, 1].
    width: [..., K] width parameters; sigma = max(width, width_clamp) / sigma_divisor.
    sigma_divisor: 9 for the positives, 4.5 for the negatives in the reference.
    width_clamp: lower clamp of the width.
    normalisation: see `CPLModelConfig.gauss_normalisation`.

  Returns:
    [..., K, L'] masks.
  """
  sigma = jnp.maximum(width, width_clamp)[..., None] / sigma_divisor   # [..., K, 1]
  diff = grid - center[..., None]                                      # [..., K, L']
  if normalisation == 'grid_max':
    weight = (INV_SQRT_2PI / sigma) * jnp.exp(-(diff ** 2) / (2 * sigma ** 2))
    return weight / jnp.max(weight, axis=-1, keepdims=True)
  sq = diff ** 2
  if normalisation == 'grid_max_stable':
    sq = sq - jnp.min(sq, axis=-1, keepdims=True)   # exp(-(d^2 - min d^2) / 2 sigma^2) = phi / max phi
    return jnp.exp(-sq / (2 * sigma ** 2))
  if normalisation == 'analytic':
    return jnp.exp(-sq / (2 * sigma ** 2))
  raise ValueError(f'unknown gauss_normalisation {normalisation!r}; expected one of {GAUSS_NORMALISATIONS}')


def negative_schedule_scale(epoch: Array, max_epoch: int, gamma: float) -> Array:
  """s = min(epoch / E, 1) ** gamma (0 ** 0 = 1), float32, same shape as `epoch`."""
  ratio = jnp.minimum(jnp.asarray(epoch).astype(jnp.float32) / jnp.float32(max_epoch), 1.0)
  return jnp.power(ratio, jnp.float32(gamma))


def negative_masks(grid: Array, center: Array, width: Array, scale: Array, config: CPLModelConfig
                   ) -> Tuple[Array, Array, Dict[str, Array]]:
  """Left / right negative Gaussians of every proposal (easy -> hard as s grows with the epoch).

  Args:
    grid: [L'] clip positions.
    center: [B, K] proposal centres.
    width: [B, K] proposal widths.
    scale: [B] schedule value s per sample.
    config: model config (sigma divisor, clamp, quirks).

  Returns:
    (left [B, K, L'], right [B, K, L'], intermediates with the fixture's `neg.*` names).
  """
  s = scale[:, None]                                          # [B, 1]
  left_free = jnp.maximum(center - width / 2, 0.0)            # [B, K]
  left_center = left_free * s * 0.5
  right_free = jnp.maximum(1 - center - width / 2, 0.0)
  right_center = 1 - right_free * s * 0.5
  right_widthparam = 1 - right_center
  if config.neg_width_is_centre:
    left_w, right_w = left_center, right_widthparam
  else:
    left_w, right_w = left_free, right_free
  left = gaussian_mask(grid, left_center, left_w, config.neg_sigma_divisor, config.width_clamp,
                       config.gauss_normalisation)
  right = gaussian_mask(grid, right_center, right_w, config.neg_sigma_divisor, config.width_clamp,
                        config.gauss_normalisation)
  if config.detach_negative_masks:
    left, right = jax.lax.stop_gradient(left), jax.lax.stop_gradient(right)
  inter = {'neg.left_free': left_free, 'neg.left_center': left_center, 'neg.right_free': right_free,
           'neg.right_center': right_center, 'neg.right_widthparam': right_widthparam}
  return left, right, inter


def decoder2_word_valid(words_mask: Array, num_slots: int, end_target: str,
                        sample_valid: Optional[Array] = None) -> Array:
  """[B, num_slots] bool: decoder-2 key mask = target mask (which positions predict a word or the end token).

  'batch_max': the first min(len + 1, Lmax) positions, Lmax = the longest sentence of the (global) batch, so only
  sentences shorter than Lmax get an id-0 end target (reference Q13); 'always': len + 1; 'never': len.
  """
  lengths = jnp.sum(words_mask.astype(jnp.int32), axis=-1)             # [B]
  if end_target == 'batch_max':
    counted = lengths if sample_valid is None else jnp.where(sample_valid.astype(bool), lengths, 0)
    num_valid = jnp.minimum(lengths + 1, jnp.max(counted))
  elif end_target == 'always':
    num_valid = lengths + 1
  elif end_target == 'never':
    num_valid = lengths
  else:
    raise ValueError(f'unknown end_target {end_target!r}; expected one of {END_TARGET_RULES}')
  return jnp.arange(num_slots)[None, :] < num_valid[:, None]


def masked_query(word_fc_out: Array, mask_token: Array, words_pos: Array, masked_words: Array, words_mask: Array,
                 num_slots: int, end_target: str = 'batch_max', sample_valid: Optional[Array] = None):
  """Decoder-2 input of the masked query (§3.8): masked slots replaced by the projected mask token, positions
  added, cut to `num_slots` (the reference drops the last of the W + 1 slots).

  Args:
    word_fc_out: [B, W+1, d] projected start token + words.
    mask_token: [d] `word_fc(mask_vec)`.
    words_pos: [W+1, d] positional table.
    masked_words: [B, W] 1 = mask word j (slot j + 1).
    words_mask: [B, W] 1 = word.
    num_slots: decoder-2 length Wd (`CPLModelConfig.num_decoder_words`).
    end_target: see `decoder2_word_valid`.
    sample_valid: [B] real rows (for the batch maximum).

  Returns:
    (masked slots [B, W+1] bool, masked words without positions [B, W+1, d], decoder-2 input [B, Wd, d],
     decoder-2 key / target mask [B, Wd]).
  """
  batch = word_fc_out.shape[0]
  masked_slots = jnp.concatenate([jnp.zeros((batch, 1), bool), masked_words.astype(bool)], axis=1)
  words_masked = jnp.where(masked_slots[..., None], mask_token, word_fc_out)
  d2_words = (words_masked + words_pos)[:, :num_slots]
  return masked_slots, words_masked, d2_words, decoder2_word_valid(words_mask, num_slots, end_target, sample_valid)


def decoder2_targets(words_id: Array, num_slots: int) -> Array:
  """[B, num_slots] int32 targets: w1..wW, zero-padded to the decoder-2 length (id 0 = end / padding)."""
  words_id = words_id.astype(jnp.int32)
  extra = num_slots - words_id.shape[1]
  return jnp.pad(words_id, ((0, 0), (0, extra))) if extra > 0 else words_id[:, :num_slots]


# ----------------------------------------------------------------------------------------------------------------
# Masked-word draws.


def draw_masked_words(rng: Array, words_mask: Array, weights: Array, row_ids: Optional[Array] = None) -> Array:
  """[B, W] int32 0/1: max(len // 3, 1) distinct words per sentence, drawn without replacement with probabilities
  `weights` (jittable).

  Same distribution as the reference's `np.random.choice(1..len, max(len//3, 1), replace=False, p=weights)`
  (successive draws proportional to p = Gumbel top-k). Row b draws from fold_in(rng, row_ids[b]) so a row's draw
  does not depend on how the batch is split over devices.

  Args:
    rng: PRNG key.
    words_mask: [B, W] 1 for the words of each sentence (a prefix).
    weights: [B, W] masking probabilities (the collated softmax of the POS weights; any positive scale works).
    row_ids: [B] int ids folded into the key per row (default 0..B-1).

  Returns:
    [B, W] int32 masking decision per word (word j = decoder slot j + 1).
  """
  batch, width = words_mask.shape
  valid = words_mask.astype(bool)
  lengths = jnp.sum(valid, axis=-1)
  num_masked = jnp.where(lengths > 0, jnp.maximum(lengths // 3, 1), 0)       # [B]
  row_ids = jnp.arange(batch) if row_ids is None else row_ids
  keys = jax.vmap(lambda r: jax.random.fold_in(rng, r))(row_ids.astype(jnp.uint32))
  gumbel = jax.vmap(lambda k: jax.random.gumbel(k, (width,), jnp.float32))(keys)   # [B, W]
  usable = valid & (weights > 0)
  scores = jnp.where(usable, jnp.log(jnp.where(usable, weights, 1.0)) + gumbel, -jnp.inf)
  order = jnp.argsort(-scores, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)                                   # rank of each word
  return ((rank < num_masked[:, None]) & usable).astype(jnp.int32)


def draw_masked_words_numpy(random_state: np.random.RandomState, words_len, weights) -> np.ndarray:
  """The reference draw bit for bit: `random_state.choice(np.arange(1, l + 1), max(l // 3, 1), replace=False,
  p=weights[i, :l])` per sentence (the original uses numpy's global RNG, i.e. a RandomState).

  Returns:
    [B, W] int32 0/1 per word (W = weights.shape[1]; word j = decoder slot j + 1).
  """
  weights = np.asarray(weights)
  out = np.zeros(weights.shape, np.int32)
  for i, length in enumerate(np.asarray(words_len).astype(int)):
    if length < 1:
      continue
    choices = random_state.choice(np.arange(1, length + 1), max(length // 3, 1), replace=False,
                                  p=weights[i, :length])
    out[i, np.asarray(choices) - 1] = 1
  return out


# ----------------------------------------------------------------------------------------------------------------
# Attention and decoders.


# GENERIC-OP: attention that returns its probabilities and re-weights them per key (ops' dot_product_attention does
# neither, and fills padded keys with finfo.min where this one needs the reference's -1e30 after the causal -inf).
def gauss_weighted_attention(query: Array, key: Array, value: Array, *, key_valid: Optional[Array],
                             causal: bool, gauss: Optional[Array], gauss_eps: float, key_fill: float,
                             gauss_rows: Optional[Array] = None, dropout_rate: float = 0.0,
                             dropout_rng: Optional[Array] = None, dropout_impl: str = 'hash') -> Tuple[Array, Array]:
  """fairseq-style attention with optional per-key re-weighting of the probabilities (CPL's Gaussian attention).

  Logits get -inf above the diagonal when causal, then `key_fill` at padded keys (masked_fill after the causal
  add, as the reference); float32 softmax; with `gauss` the probabilities are multiplied by (gauss + eps) and
  renormalised per row.

  Args:
    query: [N, T, H, Dh], already scaled.
    key: [N, S, H, Dh].
    value: [N, S, H, Dh].
    key_valid: [N, S] True = real key (None = all).
    causal: mask keys after the query position.
    gauss: [N, S] per-key weights (None = plain attention).
    gauss_eps: added to the weights before re-weighting.
    key_fill: logit of padded keys.
    gauss_rows: [N] bool, rows that are re-weighted (None = all); the others keep the plain probabilities.
    dropout_rate: dropout on the probabilities.
    dropout_rng: rng of that dropout (None = off).
    dropout_impl: see `layers.keep_mask`.

  Returns:
    (output [N, T, H, Dh], probabilities [N, H, T, S]).
  """
  precision = layers.matmul_precision(jnp.float32)
  logits = jnp.einsum('nthd,nshd->nhts', query, key, precision=precision)
  if causal:
    logits = jnp.where(causal_allowed(query.shape[1], key.shape[1]), logits, -jnp.inf)
  if key_valid is not None:
    logits = jnp.where(key_valid[:, None, None, :].astype(bool), logits, jnp.float32(key_fill))
  probs = jax.nn.softmax(logits, axis=-1)
  if gauss is not None:
    weighted = probs * (gauss[:, None, None, :] + gauss_eps)
    weighted = weighted / jnp.sum(weighted, axis=-1, keepdims=True)
    probs = weighted if gauss_rows is None else jnp.where(gauss_rows[:, None, None, None], weighted, probs)
  used = layers.dropout(probs, dropout_rate, dropout_rng, dropout_impl) if dropout_rng is not None else probs
  out = jnp.einsum('nhts,nshd->nthd', used, value, precision=precision)
  return out, probs


class CPLAttention(nn.Module):
  """The reference's MultiheadAttention: packed q/k/v in-projection (`in_proj_kernel` [d, 3d]), `out_proj`.

  Attributes:
    embed_dim: width d.
    num_heads: heads (contiguous channel blocks).
    dropout: dropout on the probabilities.
    gauss_eps: see `gauss_weighted_attention`.
    key_fill: see `gauss_weighted_attention`.
    dropout_impl: dropout mask generator.
  """
  embed_dim: int
  num_heads: int
  dropout: float = 0.0
  gauss_eps: float = 1e-10
  key_fill: float = -1e30
  dropout_impl: str = 'hash'

  @nn.compact
  def __call__(self, x: Array, memory: Optional[Array], key_valid: Optional[Array], *, causal: bool,
               gauss: Optional[Array] = None, gauss_rows: Optional[Array] = None,
               train: bool = False) -> Tuple[Array, Array]:
    """x [N, T, d] queries; memory [N, S, d] (None = self-attention). Returns (out [N, T, d], map [N, T, S])."""
    d = self.embed_dim
    kernel = self.param('in_proj_kernel', layers.xavier_uniform_fused(d, 3 * d), (d, 3 * d), jnp.float32)
    bias = self.param('in_proj_bias', nn.initializers.zeros_init(), (3 * d,), jnp.float32)
    precision = layers.matmul_precision(jnp.float32)
    source = x if memory is None else memory
    q = jnp.einsum('nti,io->nto', x, kernel[:, :d], precision=precision) + bias[:d]
    kv = jnp.einsum('nsi,io->nso', source, kernel[:, d:], precision=precision) + bias[d:]
    k, v = kv[..., :d], kv[..., d:]
    q = q * (d // self.num_heads) ** -0.5
    rng = self.make_rng('dropout') if (train and self.dropout > 0.0) else None
    out, probs = gauss_weighted_attention(
        layers.split_heads(q, self.num_heads), layers.split_heads(k, self.num_heads),
        layers.split_heads(v, self.num_heads), key_valid=key_valid, causal=causal, gauss=gauss,
        gauss_eps=self.gauss_eps, key_fill=self.key_fill, gauss_rows=gauss_rows, dropout_rate=self.dropout,
        dropout_rng=rng,
        dropout_impl=self.dropout_impl)
    out = layers.Linear(d, kernel_init=layers.xavier_uniform, bias_init=nn.initializers.zeros_init(),
                        name='out_proj')(layers.merge_heads(out))
    return out, jnp.mean(probs, axis=1)


class DecoderLayer(nn.Module):
  """Post-norm decoder layer: LN(x + SelfAttn) -> [LN(x + CrossAttn(memory))] -> LN(x + FFN); residual dropout.

  Written for `nn.scan` over the layers: (carry x, broadcast inputs) -> (x, (self map, cross map) or None).

  Attributes:
    config: model config.
    causal: causal self-attention.
    train: dropout on.
    collect: also return the head-averaged attention maps.
  """
  config: CPLModelConfig
  causal: bool = True
  train: bool = False
  collect: bool = False

  def setup(self):
    c = self.config
    attn = dict(embed_dim=c.hidden_size, num_heads=c.num_heads, dropout=c.attention_dropout,
                gauss_eps=c.gauss_attn_eps, key_fill=c.key_padding_fill, dropout_impl=c.dropout_impl)
    self.self_attn = CPLAttention(**attn)
    self.self_attn_layer_norm = layers.layer_norm(c.layer_norm_eps)
    self.encoder_attn = CPLAttention(**attn)
    self.encoder_attn_layer_norm = layers.layer_norm(c.layer_norm_eps)
    self.fc1 = layers.Linear(c.ffn_dim)
    self.fc2 = layers.Linear(c.hidden_size)
    self.final_layer_norm = layers.layer_norm(c.layer_norm_eps)
    self.residual_dropout = layers.Dropout(c.transformer_dropout, impl=c.dropout_impl)

  def __call__(self, x: Array, x_valid: Array, memory: Optional[Array], memory_valid: Optional[Array],
               self_gauss: Optional[Array], cross_gauss: Optional[Array], gauss_rows: Optional[Array]):
    """x [N, T, d]; memory [N, S, d] or None (no cross-attention). Returns (x, maps or None)."""
    train = self.train
    h, self_map = self.self_attn(x, None, x_valid, causal=self.causal, gauss=self_gauss, gauss_rows=gauss_rows,
                                 train=train)
    x = self.self_attn_layer_norm(x + self.residual_dropout(h, deterministic=not train))
    cross_map = None
    if memory is not None:
      h, cross_map = self.encoder_attn(x, memory, memory_valid, causal=False, gauss=cross_gauss,
                                       gauss_rows=gauss_rows, train=train)
      x = self.encoder_attn_layer_norm(x + self.residual_dropout(h, deterministic=not train))
    elif self.is_initializing():   # create the cross-attention params on the first (memory-less) call too
      self.encoder_attn_layer_norm(self.encoder_attn(x, x, x_valid, causal=False)[0])
    h = self.fc2(jax.nn.relu(self.fc1(x)))
    x = self.final_layer_norm(x + self.residual_dropout(h, deterministic=not train))
    return x, ((x, self_map, cross_map) if self.collect else None)


class TransformerDecoder(nn.Module):
  """`num_layers` `DecoderLayer`s scanned (params stacked on a leading layer axis under 'layers').

  Returns {'out', 'states' [L, ...], 'self_maps' [L, ...], 'cross_maps' [L, ...] or None, 'last_map'}
  (states and maps only with `collect`).
  """
  config: CPLModelConfig
  num_layers: int

  @nn.compact
  def __call__(self, x: Array, x_valid: Array, memory: Optional[Array] = None, memory_valid: Optional[Array] = None,
               *, causal: bool = True, self_gauss: Optional[Array] = None, cross_gauss: Optional[Array] = None,
               gauss_rows: Optional[Array] = None, train: bool = False, collect: bool = False) -> Dict[str, Any]:
    stack = nn.scan(DecoderLayer, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                    in_axes=nn.broadcast, length=self.num_layers,
                    unroll=self.config.decoder_unroll or self.num_layers)
    x, per_layer = stack(self.config, causal=causal, train=train, collect=collect, name='layers')(
        x, x_valid, memory, memory_valid, self_gauss, cross_gauss, gauss_rows)
    result = {'out': x}
    if collect:
      states, self_maps, cross_maps = per_layer
      result.update({'states': states, 'self_maps': self_maps, 'cross_maps': cross_maps,
                     'last_map': (cross_maps if memory is not None else self_maps)[-1]})
    return result


# ----------------------------------------------------------------------------------------------------------------
# The network.


class CPL(nn.Module):
  """CPL: K Gaussian proposals from a pred token, scored by masked query reconstruction under each Gaussian.

  Inputs (batch-first, fixed padded shapes):
    frames_feat [B, F, Df], frames_mask [B, F] (1 = real clip), words_feat [B, W, Dw] (w1..wW, no start slot),
    words_mask [B, W] (1 = word), masked_words [B, W] (1 = replace by the mask token), epoch [] or [B].
  """
  config: CPLModelConfig

  def setup(self):
    c = self.config
    zeros = nn.initializers.zeros_init()
    self.mask_vec = self.param('mask_vec', zeros, (c.word_dim,), jnp.float32)
    self.start_vec = self.param('start_vec', zeros, (c.word_dim,), jnp.float32)
    self.pred_vec = self.param('pred_vec', zeros, (c.frame_dim,), jnp.float32)
    self.frame_fc = layers.Linear(c.hidden_size)
    self.word_fc = layers.Linear(c.hidden_size)
    self.decoder1 = TransformerDecoder(c, c.num_layers1)
    self.decoder2 = TransformerDecoder(c, c.num_layers2)
    self.fc_comp = layers.Linear(c.vocab_size)
    self.fc_gauss = layers.Linear(2 * c.num_props)
    self.input_dropout = layers.Dropout(c.dropout, impl=c.dropout_impl)

  # -- pieces -----------------------------------------------------------------------------------------------------
  def embed(self, frames_feat: Array, frames_mask: Array, words_feat: Array, words_mask: Array,
            train: bool = False) -> Dict[str, Array]:
    """Input side (§3.1): pred token after the clips, start token before the words, projections, positions."""
    c = self.config
    batch = frames_feat.shape[0]
    drop = lambda x: self.input_dropout(x, deterministic=not train)  # noqa: E731
    pred = jnp.broadcast_to(self.pred_vec, (batch, 1, c.frame_dim))
    start = jnp.broadcast_to(self.start_vec, (batch, 1, c.word_dim))
    frames_in = jnp.concatenate([frames_feat.astype(jnp.float32), pred], axis=1)        # [B, F+1, Df]
    words_in = jnp.concatenate([start, words_feat.astype(jnp.float32)], axis=1)         # [B, W+1, Dw]
    if c.dropout_special_vectors:
      frames_dropped, words_dropped = drop(frames_in), drop(words_in)
    else:
      frames_dropped = jnp.concatenate([drop(frames_feat.astype(jnp.float32)), pred], axis=1)
      words_dropped = jnp.concatenate([start, drop(words_feat.astype(jnp.float32))], axis=1)
    pred_valid = jnp.full((batch, 1), not c.pred_token_key_masked)
    frames_valid = jnp.concatenate([frames_mask.astype(bool), pred_valid], axis=1)      # [B, F+1]
    words_valid = jnp.concatenate([jnp.ones((batch, 1), bool), words_mask.astype(bool)], axis=1)  # [B, W+1]
    words_pos = jnp.asarray(word_position_table(words_in.shape[1], c.hidden_size, c.position_row0_zero,
                                                c.position_freq_half_minus_one))       # [W+1, d]
    return {'frames_in': frames_in, 'frame_fc_out': self.frame_fc(frames_dropped), 'frames_valid': frames_valid,
            'words_in': words_in, 'word_fc_out': self.word_fc(words_dropped), 'words_valid': words_valid,
            'words_pos': words_pos, 'mask_token': self.word_fc(self.mask_vec)}

  def propose(self, emb: Dict[str, Array], train: bool = False, collect: bool = False) -> Dict[str, Any]:
    """Decoding 1 (§3.4): words self-encoded by decoder2, frames + pred token decoded by decoder1 -> (c, w)."""
    c = self.config
    words_in = emb['word_fc_out'] + emb['words_pos']
    words = self.decoder2(words_in, emb['words_valid'], causal=c.causal_words, train=train, collect=collect)
    frames = self.decoder1(emb['frame_fc_out'], emb['frames_valid'], words['out'], emb['words_valid'],
                           causal=c.causal_frames, train=train, collect=collect)
    pred_state = frames['out'][:, -1]                                                    # [B, d]
    gauss_logits = self.fc_gauss(pred_state)                                             # [B, 2K]
    params = jax.nn.sigmoid(gauss_logits)
    if c.gauss_params_interleaved:
      center, width = params[:, 0::2], params[:, 1::2]
    else:
      center, width = params[:, :c.num_props], params[:, c.num_props:]
    return {'words_in': words_in, 'words': words, 'frames': frames, 'pred_state': pred_state,
            'gauss_logits': gauss_logits, 'center': center, 'width': width}

  def reconstruct(self, frames: Array, frames_valid: Array, words: Array, words_valid: Array,
                  gauss: Optional[Array] = None, gauss_rows: Optional[Array] = None,
                  train: bool = False, collect: bool = False) -> Dict[str, Any]:
    """Decoding 2 (§3.9), one pass per row: Gaussian-weighted frame self-encoding, then word decoding.

    Args:
      frames: [N, L', d] clip states; frames_valid: [N, L'].
      words: [N, Wd, d] masked query input (positions added); words_valid: [N, Wd].
      gauss: [N, L'] mask weighting decoder1's self-attention and decoder2's cross-attention (None = none).
      gauss_rows: [N] bool, the rows `gauss` applies to (None = all; the others are plain passes).
      train: dropout on.
      collect: keep every layer's states and attention maps.

    Returns:
      {'frames': decoder1 result, 'words': decoder2 result, 'logits': [N, Wd, V]}.
    """
    c = self.config
    enc = self.decoder1(frames, frames_valid, causal=c.causal_frames, self_gauss=gauss, gauss_rows=gauss_rows,
                        train=train, collect=collect)
    dec = self.decoder2(words, words_valid, enc['out'], frames_valid, causal=c.causal_words, cross_gauss=gauss,
                        gauss_rows=gauss_rows, train=train, collect=collect)
    return {'frames': enc, 'words': dec, 'logits': self.fc_comp(dec['out'])}

  # -- the whole forward ------------------------------------------------------------------------------------------
  def __call__(self, frames_feat: Array, frames_mask: Array, words_feat: Array, words_mask: Array,
               masked_words: Array, epoch: Array, *, train: bool = False, negatives: Optional[bool] = None,
               sample_valid: Optional[Array] = None, intermediates: bool = False,
               kstar_of: Optional[Callable[[Array, Array], Array]] = None) -> Dict[str, Any]:
    """The training forward (`negatives` defaults to `use_negative`; eval passes False: the negatives are unused).

    `kstar_of(logits_pos [B, K, Wd, V], word_valid [B, Wd]) -> [B]` (the loss's k*): when given, the positive
    passes run first and only the negatives of k* are decoded ('logits_left' / '_right' [B, 1, Wd, V], 'kstar').

    Returns:
      {'center', 'width' [B, K], 'gauss_pos' [B, K, L'], 'logits_pos' (+ 'logits_left', 'logits_right')
      [B, K, Wd, V], 'logits_ref' [B, Wd, V], 'word_valid' [B, Wd] (key and target mask), and with
      `intermediates` a flat dict 'inter' named like the fixture's outputs.npz}.
    """
    c = self.config
    negatives = c.use_negative if negatives is None else negatives
    batch, num_frames = frames_feat.shape[:2]
    num_words = words_feat.shape[1]
    k = c.num_props
    emb = self.embed(frames_feat, frames_mask, words_feat, words_mask, train)
    prop = self.propose(emb, train, intermediates)
    center, width = prop['center'], prop['width']

    # Down-sampled clips and the positive Gaussians (§3.5, §3.6).
    num_kept = num_frames // c.downsample
    keep_idx = keep_indices(num_frames, num_kept, c.keep_idx_rule)
    grid = jnp.asarray(linspace_float32(0.0, 1.0, num_kept))
    source = emb['frame_fc_out'] if c.decoding2_from_projected_frames else prop['frames']['out']
    props_frames = source[:, keep_idx]                                                   # [B, L', d]
    props_valid = emb['frames_valid'][:, keep_idx]                                       # [B, L']
    gauss_pos = gaussian_mask(grid, center, width, c.sigma, c.width_clamp, c.gauss_normalisation)  # [B, K, L']
    pos_weight = gauss_pos / jnp.max(gauss_pos, axis=-1, keepdims=True)   # the reference's second (no-op) max-norm

    # Masked query (§3.8).
    num_dec = c.num_decoder_words(num_words)
    masked_slots, words_masked, d2_words, d2_valid = masked_query(
        emb['word_fc_out'], emb['mask_token'], emb['words_pos'], masked_words, words_mask, num_dec, c.end_target,
        sample_valid)

    masks = {'pos': pos_weight}
    neg_inter = {}
    if negatives:
      epoch = jnp.broadcast_to(jnp.asarray(epoch), (batch,))
      scale = negative_schedule_scale(epoch, c.max_epoch, c.gamma)
      masks['left'], masks['right'], neg_inter = negative_masks(grid, center, width, scale, c)
      neg_inter['neg.schedule_scale'] = scale
    if negatives and kstar_of is not None and not intermediates:   # the fixture's intermediates need every k
      ref_frames = (source[:, :num_frames], emb['frames_valid'][:, :num_frames])
      return self._kstar_negatives(props_frames, props_valid, d2_words, d2_valid, masks, kstar_of, train, {
          'center': center, 'width': width, 'gauss_pos': gauss_pos, 'word_valid': d2_valid}, ref_frames)
    names = list(masks)
    m = len(names)
    # Decoding-2 rows, sample-major (row b * R + r) so a batch-sharded input stays sharded: R = M * K proposal
    # passes (+ the reference as one more row without Gaussian when it uses the same clips).
    fused_ref = negatives and c.reference_downsampled
    per = m * k + int(fused_ref)
    gauss = jnp.stack([masks[n] for n in names], axis=1).reshape(batch, m * k, num_kept)  # [B, M*K, L']
    gauss_on = None
    if fused_ref:
      gauss = jnp.concatenate([gauss, jnp.ones((batch, 1, num_kept), gauss.dtype)], axis=1)
      gauss_on = jnp.broadcast_to(jnp.arange(per) < m * k, (batch, per)).reshape(batch * per)
    expand = lambda x: _repeat_rows(x, per)  # noqa: E731
    rec = self.reconstruct(expand(props_frames), expand(props_valid), expand(d2_words), expand(d2_valid),
                           gauss.reshape(batch * per, num_kept), gauss_on, train, intermediates)
    rec, ref = _split_rows(rec, batch, per, m, k, fused_ref)
    if negatives and not fused_ref:
      ref_frames, ref_valid = source[:, :num_frames], emb['frames_valid'][:, :num_frames]
      ref = self.reconstruct(ref_frames, ref_valid, d2_words, d2_valid, None, None, train, intermediates)

    out = {'center': center, 'width': width, 'gauss_pos': gauss_pos, 'word_valid': d2_valid}
    for i, n in enumerate(names):
      out[f'logits_{n}'] = rec['logits'][:, i]                                        # [B, K, Wd, V]
    if ref is not None:
      out['logits_ref'] = ref['logits']
    if intermediates:
      out['inter'] = self._intermediates(emb, prop, keep_idx, props_valid, masks, neg_inter, masked_slots,
                                         words_masked, d2_words, d2_valid, names, rec, ref)
    return out

  def _kstar_negatives(self, props_frames, props_valid, d2_words, d2_valid, masks, kstar_of, train, out,
                       ref_frames) -> Dict[str, Any]:
    """The K positive passes, k* from their logits, then one pass per negative of k* (+ the reference)."""
    c = self.config
    batch, k, num_kept = masks['pos'].shape

    def passes(gauss, gauss_on, rows):   # `rows` decoding-2 passes per sample, sample-major
      expand = lambda x: _repeat_rows(x, rows)  # noqa: E731
      rec = self.reconstruct(expand(props_frames), expand(props_valid), expand(d2_words), expand(d2_valid),
                             gauss.reshape(batch * rows, num_kept), gauss_on, train, False)
      return rec['logits'].reshape((batch, rows) + rec['logits'].shape[1:])      # [B, rows, Wd, V]

    out['logits_pos'] = passes(masks['pos'], None, k)                              # [B, K, Wd, V]
    kstar = kstar_of(out['logits_pos'], d2_valid)                                  # [B]
    at_kstar = lambda x: jnp.take_along_axis(x, kstar[:, None, None], axis=1)      # noqa: E731  [B, 1, L']
    negs = [at_kstar(masks['left']), at_kstar(masks['right'])]
    fused_ref = c.reference_downsampled
    if fused_ref:
      negs.append(jnp.ones((batch, 1, num_kept), masks['pos'].dtype))
    rows = len(negs)
    gauss_on = jnp.broadcast_to(jnp.arange(rows) < 2, (batch, rows)).reshape(batch * rows) if fused_ref else None
    logits = passes(jnp.concatenate(negs, axis=1), gauss_on, rows)                 # [B, 2 (+1), Wd, V]
    out.update({'logits_left': logits[:, :1], 'logits_right': logits[:, 1:2], 'kstar': kstar})
    if fused_ref:
      out['logits_ref'] = logits[:, 2]
    else:
      ref = self.reconstruct(*ref_frames, d2_words, d2_valid, None, None, train, False)
      out['logits_ref'] = ref['logits']
    return out

  def _intermediates(self, emb, prop, keep_idx, props_valid, masks, neg_inter, masked_slots, words_masked,
                     d2_words, d2_valid, names, rec, ref) -> Dict[str, Array]:
    """Flat dict with the fixture's outputs.npz names (only built when asked for)."""
    inter = {'word_fc.input': emb['words_in'], 'word_fc.out': emb['word_fc_out'], 'mask_token': emb['mask_token'],
             'frame_fc.out': emb['frame_fc_out'], 'words_pos': emb['words_pos'],
             'frames_mask': emb['frames_valid'].astype(jnp.uint8),
             'words_mask_full': emb['words_valid'].astype(jnp.uint8), 'd1.words_in': prop['words_in'],
             'pred_state': prop['pred_state'], 'gauss_logits': prop['gauss_logits'], 'center': prop['center'],
             'width': prop['width'], 'keep_idx': jnp.asarray(keep_idx, jnp.int32),
             'props_mask': props_valid.astype(jnp.uint8), 'masked_words': masked_slots.astype(jnp.uint8),
             'words_masked_nopos': words_masked, 'd2.words_in': d2_words,
             'd2.words_mask': d2_valid.astype(jnp.uint8)}
    _decoder_entries(inter, 'd1.words_enc', 'd1.words_self_attn', None, prop['words'], lambda x: x)
    inter['d1.frames_out'] = prop['frames']['out']
    _decoder_entries(inter, 'd1.frames_out', 'd1.frames_self_attn', 'd1.frames_cross_attn', prop['frames'],
                     lambda x: x)
    inter['d1.cross_attn_last'] = prop['frames']['last_map']
    for n in names:
      inter[f'gauss.{n}'] = masks[n]
    inter.update(neg_inter)
    if 'neg.schedule_scale' in inter:
      inter['neg.schedule_scale'] = inter['neg.schedule_scale'][0]
    i_pos = names.index('pos')
    pick = lambda x, i: x[:, i]  # noqa: E731
    for i, n in enumerate(names):
      inter[f'{n}.frames_enc'] = pick(rec['frames']['out'], i)
      inter[f'{n}.words_dec'] = pick(rec['words']['out'], i)
      inter[f'{n}.logits'] = pick(rec['logits'], i)
    _decoder_entries(inter, 'pos.frames_enc', 'pos.frames_self_attn', None, rec['frames'],
                     lambda x: pick(x, i_pos))
    _decoder_entries(inter, 'pos.words_dec', 'pos.words_self_attn', 'pos.words_cross_attn', rec['words'],
                     lambda x: pick(x, i_pos))
    inter['pos.cross_attn_last'] = pick(rec['words']['last_map'], i_pos)
    if ref is not None:
      inter['ref.frames_enc'] = ref['frames']['out']
      inter['ref.words_dec'] = ref['words']['out']
      inter['ref.logits'] = ref['logits']
    return inter


def _repeat_rows(x: Array, rows: int) -> Array:
  """[B, ...] -> [B * rows, ...], each sample's row repeated `rows` times (sample-major decoding-2 rows)."""
  return jnp.broadcast_to(x[:, None], (x.shape[0], rows) + x.shape[1:]).reshape((x.shape[0] * rows,) + x.shape[1:])


def _split_rows(result: Dict[str, Any], batch: int, per: int, m: int, k: int, with_ref: bool):
  """Sample-major decoding-2 rows -> (proposal passes [B, M, K, ...], the reference row [B, ...] or None).

  Per-layer arrays keep their leading layer axis ([L, B, M, K, ...]).
  """
  def split(x, stacked):
    lead = x.shape[:1] if stacked else ()
    x = x.reshape(lead + (batch, per) + x.shape[len(lead) + 1:])
    cut = (slice(None),) * len(lead) + (slice(None),)
    props = x[cut + (slice(0, m * k),)]
    props = props.reshape(lead + (batch, m, k) + props.shape[len(lead) + 2:])
    return props, (x[cut + (m * k,)] if with_ref else None)

  props, ref = {}, {}
  for part, value in result.items():
    if part == 'logits':
      props['logits'], ref['logits'] = split(value, False)
      continue
    props[part], ref[part] = {}, {}
    for key, arr in value.items():
      stacked = key in ('states', 'self_maps', 'cross_maps')
      if arr is None:
        props[part][key] = ref[part][key] = None
      else:
        props[part][key], ref[part][key] = split(arr, stacked)
  return props, (ref if with_ref else None)


def _decoder_entries(inter: dict, state_name: str, self_name: str, cross_name: Optional[str], result: dict,
                     select) -> None:
  """Adds `{state_name}.layer{i}` (every layer), `{self_name}.layer{i}` and `{cross_name}.layer{i}` maps."""
  for i in range(result['states'].shape[0]):
    inter[f'{state_name}.layer{i}'] = select(result['states'][i])
    inter[f'{self_name}.layer{i}'] = select(result['self_maps'][i])
    if cross_name is not None and result['cross_maps'] is not None:
      inter[f'{cross_name}.layer{i}'] = select(result['cross_maps'][i])
  inter[state_name] = select(result['out'])


MODEL_KEYS = ('frames_feat', 'frames_mask', 'words_feat', 'words_mask', 'masked_words', 'epoch')


def validate_batch(batch: Dict[str, Any], config: CPLModelConfig, where: str = 'batch') -> None:
  """Host-side check of a model batch; raises one ValueError naming every problem (keys, shapes, widths, ids)."""
  problems = [f'missing {k}' for k in MODEL_KEYS if k not in batch]
  shape = lambda k: tuple(np.shape(batch[k])) if k in batch else None  # noqa: E731
  frames, words = shape('frames_feat'), shape('words_feat')
  if frames is not None:
    if len(frames) != 3 or frames[2] != config.frame_dim:
      problems.append(f'frames_feat: expected [B, F, {config.frame_dim}], got {list(frames)}')
    elif frames[1] // config.downsample < 1:
      problems.append(f'frames_feat: {frames[1]} clips // downsample {config.downsample} leaves no clip')
  if words is not None and (len(words) != 3 or words[2] != config.word_dim):
    problems.append(f'words_feat: expected [B, W, {config.word_dim}], got {list(words)}')
  for key, ref in (('frames_mask', frames), ('words_mask', words), ('masked_words', words), ('words_id', words),
                   ('weights', words)):
    if key in batch and ref is not None and len(ref) == 3 and shape(key) != ref[:2]:
      problems.append(f'{key}: expected {list(ref[:2])}, got {list(shape(key))}')
  if 'words_id' in batch and np.size(batch['words_id']):
    ids = np.asarray(batch['words_id'])
    if ids.min() < 0 or ids.max() >= config.vocab_size:
      problems.append(f'words_id: ids must lie in [0, {config.vocab_size}), got [{ids.min()}, {ids.max()}]')
  if 'masked_words' in batch and 'words_mask' in batch and shape('masked_words') == shape('words_mask'):
    stray = np.asarray(batch['masked_words']).astype(bool) & ~np.asarray(batch['words_mask']).astype(bool)
    if stray.any():
      problems.append(f'masked_words: {int(stray.sum())} masked slot(s) outside the sentence (rows '
                      f'{sorted(set(np.nonzero(stray)[0].tolist()))[:5]})')
  if 'epoch' in batch and frames is not None and np.ndim(batch['epoch']) not in (0, 1):
    problems.append(f'epoch: expected a scalar or [B], got shape {list(np.shape(batch["epoch"]))}')
  if problems:
    raise ValueError(f'{where}: ' + '; '.join(problems))


def model_inputs(batch: Dict[str, Any]) -> Tuple[Array, ...]:
  """The positional model inputs of a batch (the names the data pipeline provides)."""
  return tuple(batch[k] for k in MODEL_KEYS)
