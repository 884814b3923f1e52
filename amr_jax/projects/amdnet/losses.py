"""AMDNet training losses: partially relevant NCE, moment diversity, moment relevance, and their weighted total.

Written on the global batch (every caption slot against every video), masked by caption_mask / sample_valid.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from amr_jax.ops import layers
from amr_jax.projects.amdnet import model as model_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class AMDNetLossConfig:
  """Weights and constants of the AMDNet criterion (repo `Losses/loss.py`, `model.py`; TVR cfg).

  Attributes:
    nce_weight: weight of the partially relevant retrieval loss (`loss_factor[0]`: 0.04 TVR, 0.02 ANet/Cha).
    div_weight: weight of the moment diversity loss (`loss_factor[1]` = 1).
    rel_weight: weight of the moment relevance loss (hard-coded 25).
    div_lambda: diagonal target of the diversity loss (hard-coded 0.15).
    rel_margin: margin of the relevance hinge (hard-coded 0.02).
    normalize_eps: `F.normalize` epsilon of the relevance cosines.
  """
  nce_weight: float = 0.04
  div_weight: float = 1.0
  rel_weight: float = 25.0
  div_lambda: float = 0.15
  rel_margin: float = 0.02
  normalize_eps: float = 1e-12

  @classmethod
  def from_config(cls, loss_cfg: Mapping[str, Any]) -> 'AMDNetLossConfig':
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: float(loss_cfg[k]) for k in loss_cfg.keys() if k in names})


# GENERIC-OP: log-sum-exp over the entries where `mask` holds, safe in value and gradient for masked entries.
def masked_logsumexp(x: Array, mask: Array, axis: int) -> tuple:
  """(log sum_{mask} exp x along `axis`, whether any entry is unmasked). Empty -> 0 (and False).

  Masked entries may hold anything finite or not: they are replaced before the exp (no NaN gradient).
  """
  mask = mask.astype(bool)
  has_any = jnp.any(mask, axis=axis)
  peak = jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True)
  peak = jax.lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
  shifted = jnp.where(mask, x, peak) - peak
  total = jnp.sum(jnp.where(mask, jnp.exp(shifted), 0.0), axis=axis)
  lse = jnp.log(jnp.where(has_any, total, 1.0)) + jnp.squeeze(peak, axis)
  return jnp.where(has_any, lse, 0.0), has_any


def _masked_mean(values: Array, valid: Array) -> Array:
  return jnp.sum(jnp.where(valid, values, 0.0)) / jnp.maximum(jnp.sum(valid), 1).astype(values.dtype)


def batch_validity(caption_mask: Array, sample_valid: Array) -> dict:
  """Masks of a batch of B videos x C caption slots: 'caption_valid' [B, C], 'query_valid' [B*C],
  'video_valid' [B], 'positive' [B*C, B] (slot b*C + c belongs to video b)."""
  b, c = caption_mask.shape
  video_valid = sample_valid > 0
  caption_valid = (caption_mask > 0) & video_valid[:, None]
  query_valid = caption_valid.reshape(b * c)
  video_of_query = jnp.repeat(jnp.arange(b), c)
  positive = (video_of_query[:, None] == jnp.arange(b)[None, :]) & query_valid[:, None]
  return {'caption_valid': caption_valid, 'query_valid': query_valid, 'video_valid': video_valid,
          'positive': positive}


def partially_relevant_nce(scores: Array, positive: Array, query_valid: Array, video_valid: Array) -> dict:
  """The repo's `clip_nce` on unnormalised scores S [Q, B] (query-major).

  t2v_i = LSE_b S[i, b] - S[i, y_i], averaged over the valid queries; v2t_b = LSE_{all i} S[i, b] -
  LSE_{i of video b} S[i, b] (multi-positive), averaged over the valid videos (a video without captions adds 0
  but counts, as the repo's zero-initialised vectors). Returns every piece and 'loss' = t2v + v2t.
  """
  t2v_num = jnp.sum(jnp.where(positive, scores, 0.0), axis=1)  # [Q]
  t2v_den, _ = masked_logsumexp(scores, video_valid[None, :] & query_valid[:, None], axis=1)
  v2t_num, has_pos = masked_logsumexp(scores, positive, axis=0)  # [B]
  v2t_den, _ = masked_logsumexp(scores, query_valid[:, None] & video_valid[None, :], axis=0)
  t2v = _masked_mean(t2v_den - t2v_num, query_valid)
  v2t = _masked_mean(jnp.where(has_pos, v2t_den - v2t_num, 0.0), video_valid)
  return {'t2v_num': t2v_num, 't2v_den': t2v_den, 'v2t_num': v2t_num, 'v2t_den': v2t_den, 't2v': t2v,
          'v2t': v2t, 'loss': t2v + v2t}


def moment_diversity(masks: Array, video_valid: Array, lam: float) -> dict:
  """The repo's `mask_div`: mean_b ||lam I - M~ M~^T||_F^2 with M~ = M / sum_n M (rows sum-normalised)."""
  normalised = masks / jnp.sum(masks, axis=-1, keepdims=True)  # [B, H, N]
  gram = jnp.einsum('bhn,bkn->bhk', normalised, normalised, precision=jax.lax.Precision.HIGHEST)
  target = jnp.float32(lam) * jnp.eye(masks.shape[1], dtype=jnp.float32)
  per_video = jnp.square(jnp.sqrt(jnp.sum(jnp.square(target - gram), axis=(1, 2))))  # norm, then squared
  return {'masks_row_normalised': normalised, 'gram': gram, 'per_video': per_video,
          'loss': _masked_mean(per_video, video_valid)}


def relevance_cosines(query_emb: Array, moment_feat: Array, global_vec: Array, eps: float = 1e-12) -> dict:
  """Every query against every video (parity / analysis): 'moment_cos' [Q, H, B], 'max_moment_cos',
  'best_moment', 'global_cos' [Q, B]."""
  q = layers.l2_normalize(query_emb, eps)
  moment_cos = jnp.einsum('qd,bhd->qhb', q, layers.l2_normalize(moment_feat, eps),
                          precision=jax.lax.Precision.HIGHEST)
  global_cos = jnp.einsum('qd,bd->qb', q, layers.l2_normalize(global_vec, eps), precision=jax.lax.Precision.HIGHEST)
  return {'moment_cos': moment_cos, 'max_moment_cos': jnp.max(moment_cos, axis=1),
          'best_moment': jnp.argmax(moment_cos, axis=1), 'global_cos': global_cos}


def moment_relevance(query_emb: Array, moment_feat: Array, global_vec: Array, caption_valid: Array, margin: float,
                     eps: float = 1e-12) -> dict:
  """The repo's `rank_loss`: sum over queries of max(0, margin + cos(q, v̄_own) - max_h cos(q, P_own,h)) / Nq.

  Only each query's own video enters, so this is per video (no cross-video term).

  Args:
    query_emb: [B, C, d] (the second query-projection call).
    moment_feat: [B, H, d]; global_vec: [B, d]; caption_valid: [B, C].
  """
  q = layers.l2_normalize(query_emb, eps)
  moment_cos = jnp.einsum('bcd,bhd->bch', q, layers.l2_normalize(moment_feat, eps),
                          precision=jax.lax.Precision.HIGHEST)
  global_cos = jnp.einsum('bcd,bd->bc', q, layers.l2_normalize(global_vec, eps), precision=jax.lax.Precision.HIGHEST)
  gap = (jnp.float32(margin) + global_cos) - jnp.max(moment_cos, axis=-1)  # [B, C]
  hinge = jnp.where(caption_valid & (gap >= 0), gap, 0.0)  # clamp(min=0), gradient through gap >= 0 as torch
  return {'own_moment_cos': moment_cos, 'own_global_cos': global_cos, 'hinge': hinge,
          'loss': _masked_mean(hinge, caption_valid)}


def amdnet_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array], model_cfg: model_lib.AMDNetConfig,
                loss_cfg: AMDNetLossConfig, *, return_pieces: bool = False) -> tuple:
  """(total, aux) of one training batch from `AMDNet.__call__` outputs.

  total = (nce_weight L_nce + div_weight L_div) + rel_weight L_rel, summed in the repo's order.

  Args:
    outputs: the model outputs ('query_emb_first_call', 'query_emb' [B, C, d], 'clip_tokens', ...).
    batch: 'caption_mask' [B, C], 'sample_valid' [B].
    model_cfg: network config (score_mode picks the NCE tokens).
    loss_cfg: weights and constants.
    return_pieces: also return every array of the three terms (parity checks) under 'nce', 'div', 'rel'.

  Returns:
    total scalar; aux = {'loss/<term>' unweighted, 'loss_weighted/<term>', 'loss/total'} scalars
    (terms 'clip_nce', 'mask_div', 'rank'), plus the pieces when asked.
  """
  valid = batch_validity(batch['caption_mask'], batch['sample_valid'])
  b, c, d = outputs['query_emb_first_call'].shape
  queries = outputs['query_emb_first_call'].reshape(b * c, d)
  scores, per_token = model_lib.clip_scores(queries, model_lib.retrieval_tokens(outputs, model_cfg),
                                            normalize=False)
  nce = partially_relevant_nce(scores, valid['positive'], valid['query_valid'], valid['video_valid'])
  div = moment_diversity(outputs['gauss_masks'], valid['video_valid'], loss_cfg.div_lambda)
  rel = moment_relevance(outputs['query_emb'], outputs['moment_feat'], outputs['global_vec'],
                         valid['caption_valid'], loss_cfg.rel_margin, loss_cfg.normalize_eps)
  unweighted = {'clip_nce': nce['loss'], 'mask_div': div['loss'], 'rank': rel['loss']}
  weighted = {'clip_nce': loss_cfg.nce_weight * nce['loss'], 'mask_div': loss_cfg.div_weight * div['loss'],
              'rank': rel['loss'] * loss_cfg.rel_weight}
  total = (weighted['clip_nce'] + weighted['mask_div']) + weighted['rank']
  aux = {f'loss/{k}': v for k, v in unweighted.items()}
  aux.update({f'loss_weighted/{k}': v for k, v in weighted.items()})
  aux['loss/total'] = total
  aux['loss/nce_t2v'] = nce['t2v']
  aux['loss/nce_v2t'] = nce['v2t']
  if return_pieces:
    aux.update({'nce': nce, 'div': div, 'rel': rel, 'scores_dot': scores, 'scores_dot_per_clip': per_token,
                'validity': valid})
  return total, aux


def batch_loss(params: Any, batch: Mapping[str, Array], rng: Any, model_cfg: model_lib.AMDNetConfig,
               loss_cfg: AMDNetLossConfig, *, train: bool = True) -> tuple:
  """(total, scalar aux) of a training batch: the model forward (dropout driven by `rng` when train) + the loss.

  batch: 'video_feat' [B, L, Dv], 'video_mask' [B, L], 'caption_feat' [B, C, Dq], 'caption_mask' [B, C],
  'sample_valid' [B] (global arrays; under jit with a batch-sharded input XLA forms the cross-device scores)."""
  model = model_lib.AMDNet(model_cfg)
  rngs = {'dropout': rng} if train else None
  out = model.apply({'params': params}, batch['video_feat'], batch['video_mask'], batch['caption_feat'],
                    batch['caption_mask'], train=train, rngs=rngs)
  return amdnet_loss(out, batch, model_cfg, loss_cfg)
