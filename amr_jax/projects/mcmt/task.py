"""MCMT on the task contract: CPL's data, text side, optimiser and prediction rows, MCMT's forward and loss.

Eval ranks the K proposals by NLL_f(g_k) + NLL_b(g_k) (mcmt.rank_by) and reuses CPL's windows, votes and rows.
"""
from __future__ import annotations

import jax.numpy as jnp

from amr_jax.projects.cpl import inference as cpl_inference
from amr_jax.projects.cpl import task as cpl_task
from amr_jax.projects.mcmt import losses as losses_lib
from amr_jax.projects.mcmt import model as model_lib


class MCMTTask(cpl_task.CPLTask):
  """MCMT (`configs/mcmt.py`); dims as CPL's."""

  name = 'mcmt'

  def __init__(self, config, dims=None):
    self.mcmt_cfg = model_lib.MCMTConfig.from_config(config)
    self.mcmt_loss_cfg = losses_lib.MCMTLossConfig.from_config(config)
    super().__init__(config, dims)

  def make_model(self, model_cfg):
    return model_lib.MCMT(model_cfg, self.mcmt_cfg)

  def init_params(self, rng, example_batch: dict, teacher_params=None) -> tuple:
    del teacher_params
    batch = {k: jnp.asarray(v) for k, v in example_batch.items()}
    batch.setdefault('masked_words', jnp.zeros(batch['words_mask'].shape, jnp.int32))
    variables = self.model.init({'params': rng, 'dropout': rng}, *model_lib.cpl_model.model_inputs(batch),
                                batch['words_id'], train=False, negatives=True)
    return variables['params'], None

  def loss(self, params, frozen_params, batch: dict, rng, train: bool = True) -> tuple:
    del frozen_params
    total, terms = losses_lib.batch_loss(self.model, params, batch, self.mcmt_loss_cfg, rng, train=train)
    return total, {f'loss/{k}': v for k, v in terms.items()}

  def eval_forward(self, params, batch: dict) -> dict:
    get = lambda s, k, d: cpl_task._get(self.config, s, k, d)  # noqa: E731
    masked = cpl_inference.eval_masked_words(batch, int(get('inference', 'eval_mask_seed', 0)),
                                             bool(get('quirks', 'eval_random_word_mask', True)))
    epoch = jnp.zeros((batch['frames_feat'].shape[0],), jnp.int32)
    out = self.model.apply({'params': params}, batch['frames_feat'], batch['frames_mask'], batch['words_feat'],
                           batch['words_mask'], masked, epoch, jnp.asarray(batch['words_id']), train=False,
                           negatives=False, sample_valid=batch.get('sample_valid'))
    nll_f, nll_b = (losses_lib.nll(out['logits_props'][:, t], out['targets'][:, t], out['word_valid'],
                                   self.mcmt_loss_cfg) for t in (0, 1))                       # [B, K] each
    score = nll_f + nll_b if self.mcmt_cfg.rank_by == 'both' else nll_f
    return dict(cpl_inference.ranked_outputs(score, out['center'], out['width']),
                masked_words=jnp.asarray(masked, jnp.int32))


TASK = MCMTTask
