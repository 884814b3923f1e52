"""MCMT losses (mcmt.md recipe item 8) from CPL's token NLL, masked mean and diversity term.

Per task t in {forward, inverse}: L_rec^t = w_ph [NLL(P) + NLL(H)] + w_k min_k NLL(g_k), L_rank^t = hinges of
NLL(P) against the hard (H) and easy (1 - P) negatives; L = sum_t w_t (L_rec^t + alpha_1 L_rank^t) + alpha_2 L_div.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from amr_jax.projects.cpl import losses as cpl_losses
from amr_jax.projects.cpl import model as cpl_model

Array = jax.Array
TASKS = ('forward', 'inverse')


@dataclasses.dataclass(frozen=True)
class MCMTLossConfig:
  """Constants (Charades-STA: CPL's m1 0.1, m2 0.15, lambda 0.146, alpha_1 1, alpha_2 5; task weights 1).

  Attributes:
    margin_hard: margin of NLL(P) below NLL(whole video) (CNM / CPL m1).
    margin_easy: margin of NLL(P) below NLL(1 - P) (CNM / CPL m2).
    lam, alpha_1, alpha_2, label_smoothing, smoothing_over_all_classes, diversity_l1_normalise: as CPL.
    forward_weight / inverse_weight: w_f, w_b.
    rec_pos_hard_weight: weight of each of NLL(P), NLL(H) in L_rec (1/2).
    rec_props_weight: weight of min_k NLL(g_k) in L_rec (1/2: keeps the single proposals trained, as CPL).
  """
  margin_hard: float = 0.1
  margin_easy: float = 0.15
  lam: float = 0.146
  alpha_1: float = 1.0
  alpha_2: float = 5.0
  label_smoothing: float = 0.1
  smoothing_over_all_classes: bool = True
  diversity_l1_normalise: bool = True
  forward_weight: float = 1.0
  inverse_weight: float = 1.0
  rec_pos_hard_weight: float = 0.5
  rec_props_weight: float = 0.5

  @classmethod
  def from_config(cls, config) -> 'MCMTLossConfig':
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for section in ('loss', 'quirks'):
      for key, value in config.get(section, {}).items():
        key = {'lambda': 'lam', 'margin_1': 'margin_hard', 'margin_2': 'margin_easy'}.get(key, key)
        if key in fields:
          values[key] = value
    return cls(**values)


def nll(logits: Array, targets: Array, word_valid: Array, cfg: MCMTLossConfig) -> Array:
  """Per-sequence label-smoothed NLL of logits [B, ..., Wd, V] with targets / mask broadcast from [B, Wd]."""
  extra = logits.ndim - 3
  shape = logits.shape[:-1]
  expand = lambda x: jnp.broadcast_to(x.reshape(x.shape[:1] + (1,) * extra + x.shape[1:]), shape)  # noqa: E731
  return cpl_losses.token_nll(logits, expand(targets), expand(word_valid), cfg.label_smoothing,
                              cfg.smoothing_over_all_classes)[1]


def mcmt_loss(out: Dict[str, Any], cfg: MCMTLossConfig, sample_valid: Optional[Array] = None
              ) -> Tuple[Array, Dict[str, Array]]:
  """(total, scalar terms) from the MCMT forward outputs."""
  mean = lambda x: cpl_losses.masked_mean(x, sample_valid)  # noqa: E731
  total = 0.0
  terms = {}
  for t, (name, weight) in enumerate(zip(TASKS, (cfg.forward_weight, cfg.inverse_weight))):
    targets, valid = out['targets'][:, t], out['word_valid']
    nll_props = nll(out['logits_props'][:, t], targets, valid, cfg)                        # [B, K]
    nll_pos, nll_easy, nll_hard = (nll(out[f'logits_{n}'][:, t], targets, valid, cfg) for n in ('pos', 'easy', 'hard'))
    l_rec = (cfg.rec_pos_hard_weight * (mean(nll_pos) + mean(nll_hard))
             + cfg.rec_props_weight * mean(jnp.min(nll_props, axis=-1)))
    hinge_hard = mean(jnp.maximum(nll_pos - nll_hard + cfg.margin_hard, 0.0))
    hinge_easy = mean(jnp.maximum(nll_pos - nll_easy + cfg.margin_easy, 0.0))
    l_rank = hinge_hard + hinge_easy
    total = total + weight * (l_rec + cfg.alpha_1 * l_rank)
    terms.update({f'{name}/L_rec': l_rec, f'{name}/L_rank': l_rank, f'{name}/nll_pos': mean(nll_pos),
                  f'{name}/nll_easy': mean(nll_easy), f'{name}/nll_hard': mean(nll_hard),
                  f'{name}/nll_min_k': mean(jnp.min(nll_props, axis=-1))})
  _, _, div = cpl_losses.diversity(out['gauss_pos'], cfg.lam, cfg.diversity_l1_normalise)
  div_mean = mean(div)
  total = total + cfg.alpha_2 * div_mean
  terms.update({'L_div': div_mean, 'total': total, 'positive_mask_mean': mean(jnp.mean(out['positive_mask'], -1))})
  return total, terms


def batch_loss(model, params, batch: Dict[str, Any], cfg: MCMTLossConfig, rng: Optional[Array] = None, *,
               train: bool = True) -> Tuple[Array, Dict[str, Array]]:
  """Forward + `mcmt_loss` (pure, jittable); masked words drawn from `rng` as CPL's `batch_loss`."""
  batch, dropout_rng, use_dropout = cpl_losses.with_masked_words(batch, rng, train)
  out = model.apply({'params': params}, *cpl_model.model_inputs(batch), batch['words_id'], train=use_dropout,
                    sample_valid=batch.get('sample_valid'), rngs={'dropout': dropout_rng} if use_dropout else {})
  return mcmt_loss(out, cfg, batch.get('sample_valid'))
