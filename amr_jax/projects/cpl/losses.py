"""CPL losses (`models/loss.py` of the reference): label-smoothed reconstruction NLL, L_rec, L_ivc, diversity.

total = L_rec + L_ivc; every term and per-sample value comes back in the aux dict (fixture names in comments).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from amr_jax.projects.cpl import model as model_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CPLLossConfig:
  """Loss constants (Charades-STA recipe) and the loss-side quirks (default = reference).

  Attributes:
    margin_1: margin of the reference hinge (k* vs the whole video).
    margin_2: margin of the left / right negative hinges.
    lam: lambda of the diversity target lambda * I_K.
    alpha_1: weight of the sum of the three hinge means.
    alpha_2: weight of the diversity term.
    label_smoothing: epsilon of the token NLL.
    rec_weight_each: weight of each of mean min_k NLL and mean reference NLL in L_rec (1/2).
    smoothing_over_all_classes: epsilon / V over every class, id 0 and the true class included [Q14]
      (False: epsilon / (V - 1) over the classes 1..V-1).
    negatives_at_kstar: the left / right hinges use the negatives of k* only [Q18] (False: mean over all K).
    ref_hinge_grad_to_ref: the reference hinge's gradient reaches the reference NLL [Q19] (False: stopped).
    diversity_l1_normalise: diversity on row-L1-normalised Gaussians [Q20] (False: row-L2-normalised).
  """
  margin_1: float = 0.1
  margin_2: float = 0.15
  lam: float = 0.146
  alpha_1: float = 1.0
  alpha_2: float = 5.0
  label_smoothing: float = 0.1
  rec_weight_each: float = 0.5
  smoothing_over_all_classes: bool = True
  negatives_at_kstar: bool = True
  ref_hinge_grad_to_ref: bool = True
  diversity_l1_normalise: bool = True

  @classmethod
  def from_config(cls, config) -> 'CPLLossConfig':
    """From a run config: `config.loss` (keys as the fields; 'lambda' accepted for lam) and `config.quirks`."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for section in ('loss', 'quirks'):
      if section in config:
        for key, value in config[section].items():
          key = 'lam' if key == 'lambda' else key
          if key in fields:
            values[key] = value
    return cls(**values)


def token_nll(logits: Array, targets: Array, mask: Array, epsilon: float = 0.1,
              over_all_classes: bool = True) -> Tuple[Array, Array]:
  """Label-smoothed token NLL and its per-sequence mean (`cal_nll_loss`).

  token = (1 - eps) * -log p[y] + eps / V * sum_v -log p[v], zero where mask = 0; sequence = sum / #valid.

  Args:
    logits: [..., W, V].
    targets: [..., W] int ids.
    mask: [..., W] 1 = scored position.
    epsilon: label smoothing.
    over_all_classes: smoothing over every class (reference) or over 1..V-1.

  Returns:
    (per-token [..., W], per-sequence [...]).
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  vocab = logits.shape[-1]
  if over_all_classes:
    smooth = -jnp.sum(logp, axis=-1) * (epsilon / vocab)
  else:
    smooth = -jnp.sum(logp[..., 1:], axis=-1) * (epsilon / (vocab - 1))
  tok = (1 - epsilon) * nll + smooth
  valid = mask.astype(bool)
  tok = jnp.where(valid, tok, 0.0)
  count = jnp.sum(valid, axis=-1).astype(jnp.float32)
  return tok, jnp.sum(tok, axis=-1) / jnp.maximum(count, 1.0)   # an empty row gives 0, not 0/0


def masked_mean(x: Array, weight: Optional[Array]) -> Array:
  """Mean over the batch axis, counting only rows with weight 1 (plain mean when weight is None)."""
  if weight is None:
    return jnp.mean(x)
  weight = weight.astype(x.dtype)
  return jnp.sum(x * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def diversity(gauss: Array, lam: float, l1_normalise: bool = True) -> Tuple[Array, Array, Array]:
  """||lambda I - G G^T||_F^2 per sample with G = the row-normalised positive Gaussians.

  Args:
    gauss: [B, K, L'] positive masks.
    lam: lambda.
    l1_normalise: rows / their sum (reference) or / their L2 norm.

  Returns:
    (normalised G [B, K, L'], gram [B, K, K], per-sample value [B]).
  """
  if l1_normalise:
    norm = gauss / jnp.sum(gauss, axis=-1, keepdims=True)
  else:
    norm = gauss / jnp.sqrt(jnp.sum(gauss ** 2, axis=-1, keepdims=True))
  gram = jnp.einsum('bkt,bjt->bkj', norm, norm, precision=jax.lax.Precision.HIGHEST)
  target = lam * jnp.eye(gauss.shape[1], dtype=gauss.dtype)
  return norm, gram, jnp.sum((target - gram) ** 2, axis=(1, 2))


def proposal_nlls(out: Dict[str, Any], targets: Array, cfg: CPLLossConfig) -> Dict[str, Array]:
  """Per-token and per-sequence NLL of every pass: 'pos' / 'left' / 'right' [B, K(, Wd)], 'ref' [B(, Wd)]."""
  mask = out['word_valid']                                                      # [B, Wd]
  result = {}
  for name in ('pos', 'left', 'right', 'ref'):
    logits = out.get(f'logits_{name}')
    if logits is None:
      continue
    per_prop = logits.ndim == 4
    tgt = targets[:, None] if per_prop else targets
    msk = mask[:, None] if per_prop else mask
    tok, seq = token_nll(logits, jnp.broadcast_to(tgt, logits.shape[:-1]), jnp.broadcast_to(msk, logits.shape[:-1]),
                         cfg.label_smoothing, cfg.smoothing_over_all_classes)
    result[f'nll_tok.{name}'] = tok
    result[f'nll.{name}'] = seq
  return result


def cpl_loss(out: Dict[str, Any], targets: Array, cfg: CPLLossConfig,
             sample_valid: Optional[Array] = None) -> Tuple[Array, Dict[str, Array]]:
  """total = L_rec + L_ivc (reference `rec_loss` + `ivc_loss`).

  Args:
    out: model outputs (needs logits_pos / _left / _right / _ref, word_valid, gauss_pos).
    targets: [B, Wd] decoder-2 targets (`model.decoder2_targets`).
    cfg: loss config.
    sample_valid: [B] 1 = real row (padding rows are left out of every batch mean).

  Returns:
    (total, aux): aux has every term under the fixture's names (nll.*, kstar, hinge.*, div.*) and
    'L_rec', 'L_ivc', 'total', 'rec.min_k_nll_mean', 'rec.ref_nll_mean', 'ivc.{ref,left,right}_hinge_mean',
    'ivc.rank_sum', 'ivc.div_mean'.
  """
  aux = proposal_nlls(out, targets, cfg)
  nll_pos = aux['nll.pos']                                                      # [B, K]
  kstar = out['kstar'] if 'kstar' in out else jnp.argmin(nll_pos, axis=-1)      # [B] (the model's, if it chose)
  at_kstar = lambda x: jnp.take_along_axis(x, kstar[:, None], axis=-1)[:, 0]  # noqa: E731
  nll_min = at_kstar(nll_pos)                                                   # gradient to k* only
  mean = lambda x: masked_mean(x, sample_valid)  # noqa: E731

  min_mean = mean(nll_min)
  terms = {'nll.min': nll_min, 'kstar': kstar, 'rec.min_k_nll_mean': min_mean}
  if 'nll.ref' in aux:
    nll_ref = aux['nll.ref']
    ref_mean = mean(nll_ref)
    l_rec = cfg.rec_weight_each * min_mean + cfg.rec_weight_each * ref_mean
    ref_for_hinge = nll_ref if cfg.ref_hinge_grad_to_ref else jax.lax.stop_gradient(nll_ref)
    pre_ref = nll_min - ref_for_hinge + cfg.margin_1
    hinge_ref = jnp.maximum(pre_ref, 0.0)
    rank_sum = mean(hinge_ref)
    terms.update({'rec.ref_nll_mean': ref_mean, 'hinge.ref': hinge_ref, 'hinge.ref_preclamp': pre_ref,
                  'ivc.ref_hinge_mean': rank_sum})
  else:   # use_negative off: the reference's L_rec is the min alone and the rank term the min mean
    l_rec, rank_sum = min_mean, min_mean
  for side in ('left', 'right'):
    if f'nll.{side}' not in aux:
      continue
    nll_side = aux[f'nll.{side}']                                               # [B, K] or [B, 1] (k* only)
    side_k = nll_side[:, 0] if 'kstar' in out else at_kstar(nll_side)
    if cfg.negatives_at_kstar:
      pre = nll_min - side_k + cfg.margin_2
      hinge = jnp.maximum(pre, 0.0)
    else:
      pre_all = nll_min[:, None] - nll_side + cfg.margin_2
      pre, hinge = jnp.mean(pre_all, axis=-1), jnp.mean(jnp.maximum(pre_all, 0.0), axis=-1)
    side_mean = mean(hinge)
    rank_sum = rank_sum + side_mean
    terms.update({f'nll.{side}_at_kstar': side_k, f'hinge.{side}': hinge, f'hinge.{side}_preclamp': pre,
                  f'ivc.{side}_hinge_mean': side_mean})

  gauss_l1, gram, div = diversity(out['gauss_pos'], cfg.lam, cfg.diversity_l1_normalise)
  div_mean = mean(div)
  l_ivc = cfg.alpha_1 * rank_sum + cfg.alpha_2 * div_mean
  total = l_rec + l_ivc

  aux.update(terms)
  aux.update({
      'div.gauss_l1': gauss_l1, 'div.gram': gram, 'div.per_sample': div,
      'nll.num_target_tokens': jnp.sum(out['word_valid'].astype(jnp.int32), axis=-1),
      'L_rec': l_rec, 'ivc.rank_sum': rank_sum, 'ivc.div_mean': div_mean, 'L_ivc': l_ivc, 'total': total,
  })
  return total, aux


SCALAR_METRICS = ('L_rec', 'L_ivc', 'rec.min_k_nll_mean', 'rec.ref_nll_mean', 'ivc.ref_hinge_mean',
                  'ivc.left_hinge_mean', 'ivc.right_hinge_mean', 'ivc.rank_sum', 'ivc.div_mean')


def scalar_metrics(aux: Dict[str, Array]) -> Dict[str, Array]:
  """The scalar terms of `cpl_loss`'s aux dict (what a trainer logs)."""
  return {k: aux[k] for k in SCALAR_METRICS if k in aux}


def with_masked_words(batch: Dict[str, Any], rng: Optional[Array], train: bool) -> Tuple[dict, Optional[Array], bool]:
  """(batch with masked_words, dropout rng, whether dropout runs): the words are drawn from one half of `rng`
  (`model.draw_masked_words` with `weights`, rows = `sample_index`) unless the batch gives them."""
  batch = dict(batch)
  dropout_rng = None
  if rng is not None:
    rng, dropout_rng = jax.random.split(rng)
  if 'masked_words' not in batch:
    if rng is None:
      raise ValueError('batch_loss: the batch has no masked_words and no rng was given to draw them')
    batch['masked_words'] = model_lib.draw_masked_words(rng, batch['words_mask'], batch['weights'],
                                                        batch.get('sample_index'))
  return batch, dropout_rng, train and dropout_rng is not None


def batch_loss(model: model_lib.CPL, params, batch: Dict[str, Any], cfg: CPLLossConfig, rng: Optional[Array] = None,
               *, train: bool = True) -> Tuple[Array, Dict[str, Array]]:
  """Forward + `cpl_loss` on one batch (the trainer's loss; pure and jittable).

  Consumes frames_feat, frames_mask, words_feat, words_mask, words_id, epoch, sample_valid (optional) and
  masked_words; without masked_words they are drawn from `rng` (`model.draw_masked_words` with `weights`, row ids
  = `sample_index` when present, so any device split draws the same words). Dropout runs when `train` and an rng
  is given. No timestamp, window or duration is read.
  """
  batch, dropout_rng, use_dropout = with_masked_words(batch, rng, train)
  kstar_of = None
  if model.config.decode_negatives == 'kstar':
    if not cfg.negatives_at_kstar:
      raise ValueError("model.decode_negatives='kstar' needs quirks.negatives_at_kstar=True (the loss reads "
                       "every proposal's negatives otherwise)")

    def kstar_of(logits_pos, word_valid):   # the same NLL and argmin as `cpl_loss`
      targets = model_lib.decoder2_targets(batch['words_id'], word_valid.shape[1])
      nll = proposal_nlls({'logits_pos': logits_pos, 'word_valid': word_valid}, targets, cfg)['nll.pos']
      return jnp.argmin(nll, axis=-1)
  out = model.apply({'params': params}, *model_lib.model_inputs(batch), train=use_dropout,
                    sample_valid=batch.get('sample_valid'), rngs={'dropout': dropout_rng} if use_dropout else {},
                    kstar_of=kstar_of)
  targets = model_lib.decoder2_targets(batch['words_id'], out['word_valid'].shape[1])
  return cpl_loss(out, targets, cfg, batch.get('sample_valid'))
