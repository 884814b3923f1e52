"""MCMT network: CPL's proposals and Gaussian masks, one combined positive mask, easy / hard negatives, and forward
plus inverse masked query reconstruction (the CPL module's embed / propose / reconstruct, reused as they are).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from amr_jax.ops import layers
from amr_jax.projects.cpl import losses as cpl_losses
from amr_jax.projects.cpl import model as cpl_model

Array = jax.Array
COMBINES = ('nll_softmax', 'max', 'mean', 'learned')
INVERSE_MODES = ('reverse', 'complement')
RANK_BY = ('both', 'forward')


@dataclasses.dataclass(frozen=True)
class MCMTConfig:
  """MCMT's additions (mcmt.md recipe items 4, 5, 7, 10; defaults = the recipe's).

  Attributes:
    combine: how the K proposal masks make the positive mask P: 'nll_softmax' = sum_k a_k g_k with
      a = softmax(-NLL_f(g_k) / tau), stop-gradient (recipe default); 'max'; 'mean'; 'learned' = softmax of a
      Linear on the pred-token state.
    tau: temperature of 'nll_softmax'.
    inverse_mode: 'reverse' = right-to-left reconstruction (own start vector, shared weights, same masked words;
      recipe default); 'complement' = left to right with the complementary words masked.
    rank_by: eval ranking of the proposals by NLL_f + NLL_b ('both', recipe) or NLL_f alone ('forward').
    label_smoothing / smoothing_over_all_classes: the token NLL of the P weights (as the CPL loss).
  """
  combine: str = 'nll_softmax'
  tau: float = 1.0
  inverse_mode: str = 'reverse'
  rank_by: str = 'both'
  label_smoothing: float = 0.1
  smoothing_over_all_classes: bool = True

  def __post_init__(self):
    problems = []
    for name, allowed in (('combine', COMBINES), ('inverse_mode', INVERSE_MODES), ('rank_by', RANK_BY)):
      if getattr(self, name) not in allowed:
        problems.append(f'mcmt.{name} {getattr(self, name)!r} not in {allowed}')
    if problems:
      raise ValueError('MCMTConfig: ' + '; '.join(problems))

  @classmethod
  def from_config(cls, config) -> 'MCMTConfig':
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in config.get('mcmt', {}).items() if k in fields}
    for key in ('label_smoothing',):
      if key in config.get('loss', {}):
        values[key] = config.loss[key]
    if 'smoothing_over_all_classes' in config.get('quirks', {}):
      values['smoothing_over_all_classes'] = config.quirks.smoothing_over_all_classes
    return cls(**values)


def reverse_index(words_mask: Array) -> Array:
  """[B, W] int32: position j reads word n - 1 - j for j < n (n = the sentence length), padding stays in place."""
  lengths = jnp.sum(words_mask.astype(jnp.int32), axis=-1, keepdims=True)     # [B, 1]
  j = jnp.arange(words_mask.shape[1])[None, :]
  return jnp.where(j < lengths, lengths - 1 - j, j).astype(jnp.int32)


def inverse_words(words_feat: Array, words_id: Array, words_mask: Array, masked_words: Array, mode: str):
  """(words_feat, words_id, masked_words) of the inverse task: reversed sentences, or the complementary mask."""
  if mode == 'reverse':
    idx = reverse_index(words_mask)
    take = lambda x: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)  # noqa: E731
    return take(words_feat), take(words_id), take(masked_words)
  complement = words_mask.astype(bool) & ~masked_words.astype(bool)
  return words_feat, words_id, complement.astype(masked_words.dtype)


def combine_masks(gauss: Array, mode: str, nll: Optional[Array] = None, tau: float = 1.0,
                  logits: Optional[Array] = None) -> Array:
  """The positive mask P [B, L'] from the proposal masks [B, K, L'], normalised to a peak of 1.

  nll: [B, K] forward NLL per proposal ('nll_softmax', stop-gradient); logits: [B, K] ('learned').
  """
  if mode == 'nll_softmax':
    weights = jax.nn.softmax(-jax.lax.stop_gradient(nll) / tau, axis=-1)
    mixed = jnp.einsum('bk,bkt->bt', weights, gauss)
  elif mode == 'learned':
    mixed = jnp.einsum('bk,bkt->bt', jax.nn.softmax(logits, axis=-1), gauss)
  elif mode == 'max':
    mixed = jnp.max(gauss, axis=1)
  elif mode == 'mean':
    mixed = jnp.mean(gauss, axis=1)
  else:
    raise ValueError(f'unknown combine {mode!r}; expected one of {COMBINES}')
  return mixed / jnp.max(mixed, axis=-1, keepdims=True)


class MCMT(cpl_model.CPL):
  """CPL + the combined positive mask, easy (1 - P) and hard (whole video) negatives, forward + inverse tasks.

  Extra input: words_id [B, W] (the NLL weights of 'nll_softmax' need the targets inside the forward).
  """
  mcmt: MCMTConfig = MCMTConfig()

  def setup(self):
    super().setup()
    zeros = nn.initializers.zeros_init()
    self.start_vec_inverse = self.param('start_vec_inverse', zeros, (self.config.word_dim,), jnp.float32)
    if self.mcmt.combine == 'learned':
      self.fc_combine = layers.Linear(self.config.num_props)

  def _decoder_words(self, emb, words_feat, words_mask, masked_words, start_vec, train):
    """Decoder-2 input [B, Wd, d] of one task: start vector + word_fc(words), masked words = the mask token."""
    c = self.config
    batch = words_feat.shape[0]
    start = jnp.broadcast_to(start_vec, (batch, 1, c.word_dim))
    words_in = jnp.concatenate([start, words_feat.astype(jnp.float32)], axis=1)          # [B, W+1, Dw]
    words_fc = self.word_fc(self.input_dropout(words_in, deterministic=not train))
    slots = jnp.concatenate([jnp.zeros((batch, 1), bool), masked_words.astype(bool)], axis=1)
    words = jnp.where(slots[..., None], emb['mask_token'], words_fc) + emb['words_pos']
    return words[:, :c.num_decoder_words(words_feat.shape[1])]

  def _passes(self, frames, frames_valid, words, words_valid, gauss, gauss_on, train):
    """Decoding-2 passes, sample-major rows: words [B, T, R, Wd, d] (T tasks), gauss [B, R, L'] -> logits
    [B, T, R, Wd, V]."""
    batch, tasks, rows = words.shape[:3]
    n = tasks * rows
    rep = lambda x: jnp.broadcast_to(x[:, None], (batch, n) + x.shape[1:]).reshape((batch * n,) + x.shape[1:])  # noqa: E731
    g = jnp.broadcast_to(gauss[:, None], (batch, tasks) + gauss.shape[1:]).reshape(batch * n, gauss.shape[-1])
    on = jnp.broadcast_to(gauss_on[None, None], (batch, tasks, rows)).reshape(batch * n)
    wv = jnp.broadcast_to(words_valid[:, None], (batch, n) + words_valid.shape[1:]).reshape(
        (batch * n,) + words_valid.shape[1:])
    rec = self.reconstruct(rep(frames), rep(frames_valid), words.reshape((batch * n,) + words.shape[3:]), wv,
                           g, on, train)
    return rec['logits'].reshape((batch, tasks, rows) + rec['logits'].shape[1:])

  def __call__(self, frames_feat: Array, frames_mask: Array, words_feat: Array, words_mask: Array,
               masked_words: Array, epoch: Array, words_id: Optional[Array] = None, *, train: bool = False,
               negatives: Optional[bool] = None, sample_valid: Optional[Array] = None,
               intermediates: bool = False) -> Dict[str, Any]:
    """negatives=False (eval): the proposal passes only. Returns center, width [B, K], gauss_pos [B, K, L'],
    word_valid [B, Wd], targets [B, 2, Wd] (forward, inverse), logits_props [B, 2, K, Wd, V] and with negatives
    positive_mask [B, L'], logits_pos / logits_easy / logits_hard [B, 2, Wd, V]."""
    del epoch, intermediates
    c, m = self.config, self.mcmt
    negatives = True if negatives is None else negatives
    batch, num_frames = frames_feat.shape[:2]
    emb = self.embed(frames_feat, frames_mask, words_feat, words_mask, train)
    prop = self.propose(emb, train)
    center, width = prop['center'], prop['width']
    num_kept = num_frames // c.downsample
    keep_idx = cpl_model.keep_indices(num_frames, num_kept, c.keep_idx_rule)
    grid = jnp.asarray(cpl_model.linspace_float32(0.0, 1.0, num_kept))
    source = emb['frame_fc_out'] if c.decoding2_from_projected_frames else prop['frames']['out']
    frames, frames_valid = source[:, keep_idx], emb['frames_valid'][:, keep_idx]          # [B, L', d], [B, L']
    gauss_pos = cpl_model.gaussian_mask(grid, center, width, c.sigma, c.width_clamp, c.gauss_normalisation)

    # Forward and inverse decoder inputs and targets.
    inv_feat, inv_id, inv_masked = inverse_words(words_feat, words_id, words_mask, masked_words, m.inverse_mode)
    inv_start = self.start_vec_inverse if m.inverse_mode == 'reverse' else self.start_vec
    words = jnp.stack([self._decoder_words(emb, words_feat, words_mask, masked_words, self.start_vec, train),
                       self._decoder_words(emb, inv_feat, words_mask, inv_masked, inv_start, train)], axis=1)
    num_dec = words.shape[2]
    word_valid = cpl_model.decoder2_word_valid(words_mask, num_dec, c.end_target, sample_valid)   # [B, Wd]
    targets = jnp.stack([cpl_model.decoder2_targets(words_id, num_dec),
                         cpl_model.decoder2_targets(inv_id, num_dec)], axis=1)                   # [B, 2, Wd]

    # Pass 1: every proposal mask, both tasks.
    k = c.num_props
    logits_props = self._passes(frames, frames_valid, jnp.broadcast_to(words[:, :, None], (batch, 2, k) +
                                                                       words.shape[2:]),
                                word_valid, gauss_pos, jnp.ones((k,), bool), train)              # [B, 2, K, Wd, V]
    out = {'center': center, 'width': width, 'gauss_pos': gauss_pos, 'word_valid': word_valid, 'targets': targets,
           'logits_props': logits_props}
    if not negatives:
      return out

    # Pass 2: positive P, easy negative 1 - P, hard negative = the whole video (no mask), both tasks.
    nll_f = None
    if m.combine == 'nll_softmax':
      _, nll_f = cpl_losses.token_nll(logits_props[:, 0], jnp.broadcast_to(targets[:, 0, None], (batch, k, num_dec)),
                                      jnp.broadcast_to(word_valid[:, None], (batch, k, num_dec)), m.label_smoothing,
                                      m.smoothing_over_all_classes)
    logits_combine = self.fc_combine(prop['pred_state']) if m.combine == 'learned' else None
    positive = combine_masks(gauss_pos, m.combine, nll_f, m.tau, logits_combine)                 # [B, L']
    masks = jnp.stack([positive, 1.0 - positive, jnp.ones_like(positive)], axis=1)               # [B, 3, L']
    logits = self._passes(frames, frames_valid, jnp.broadcast_to(words[:, :, None], (batch, 2, 3) + words.shape[2:]),
                          word_valid, masks, jnp.array([True, True, False]), train)             # [B, 2, 3, Wd, V]
    out.update({'positive_mask': positive, 'logits_pos': logits[:, :, 0], 'logits_easy': logits[:, :, 1],
                'logits_hard': logits[:, :, 2]})
    return out
