"""The AMR task for the generic trainer: model construction, stage-1/stage-2 losses, eval forward, init.

Stage 2 keeps the frozen teacher as a separate pytree (`frozen_params`): no gradient, no optimiser state.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax import losses as amr_losses
from amr_jax import optim as optim_lib
from amr_jax import predict as predict_lib
from amr_jax.models.amr import AMR, AMRModelConfig
from amr_jax.train.task_base import MODEL_INPUTS, LinenTask  # noqa: F401  (MODEL_INPUTS re-exported)

EVAL_OUTPUTS = ('pred_logits', 'pred_spans', 'iou_scores', 'saliency_scores')


@dataclasses.dataclass
class AMRTask(LinenTask):
  """Binds a config to the AMR model and loss; every method is pure and jittable."""
  eval_task = 'qvh'

  def __post_init__(self):
    self.stage = self.config.model.stage
    self.model_config = AMRModelConfig.from_configs(self.config.model, self.config.quirks,
                                                    self.video_dim, self.text_dim)
    self.model = AMR(self.model_config)

  # -- parameters ---------------------------------------------------------------------------------
  def init_params(self, rng: jax.Array, batch: dict):
    return self.init_model(rng, batch, train=False)

  def apply(self, params, batch: dict, *, train: bool, rng=None, pass_a_only: bool = False):
    return self.apply_model(params, batch, train=train, pass_a_only=pass_a_only,
                            dropout_rng=rng if train else None)

  # -- training -----------------------------------------------------------------------------------
  def loss(self, params, frozen_params, batch: dict, rng: jax.Array, *, train: bool = True, indices=None):
    student_rng, teacher_rng = jax.random.split(rng)
    outputs = self.apply(params, batch, train=train, rng=student_rng)
    teacher_hs = None
    if self.stage == 'distill':
      teacher_train = train and self.config.quirks.teacher_train_mode
      # Only the teacher's pass-A states are distilled, so its pass B is never computed (one forward).
      teacher_out = self.apply(frozen_params, batch, train=teacher_train, rng=teacher_rng, pass_a_only=True)
      teacher_hs = jax.lax.stop_gradient(teacher_out['hs'])
    total, aux = amr_losses.amr_loss(
        outputs, batch, loss_cfg=self.config.loss, matcher_cfg=self.config.matcher, quirks=self.config.quirks,
        teacher_hs=teacher_hs, indices=indices)
    metrics = {f'loss/{k}': v for k, v in aux['weighted'].items()}
    return total, metrics

  # -- inference ----------------------------------------------------------------------------------
  def eval_forward(self, params, batch: dict) -> dict:
    outputs = self.apply(params, batch, train=False)
    return {k: outputs[k] for k in EVAL_OUTPUTS}

  def postprocess(self, host_outputs: dict, records, num_clips) -> list[dict]:
    return predict_lib.submission_rows(
        host_outputs, [r.qid for r in records], [r.duration or n * 2.0 for r, n in zip(records, num_clips)],
        num_clips, [r.query for r in records], [r.vid for r in records],
        fixed_clamp_150=self.config.quirks.fixed_clamp_150)

  # -- stage 2 ------------------------------------------------------------------------------------
  @property
  def needs_teacher(self) -> bool:
    return self.stage == 'distill'

  def trainable_mask_fn(self, params):
    """True for params that get a gradient; the unused text pos-embed (and stage-2 query_embed) do not."""
    return optim_lib.params_with_grad_mask(params, self.stage)

  def stage2_from_stage1(self, stage1_params, stage2_template, rng):
    """(student, teacher) as the reference builds them (amr.md §6).

    Both load every stage-1 tensor. Student: `new_query_embed` fresh N(0,1) (quirk stage2_random_anchors;
    off = copy the stage-1 `query_embed`), active FFNs copied from the original FFNs. Teacher: its own fresh
    N(0,1) anchors (or the stage-1 ones), active FFNs left at their random init (only its pass A is used).
    """
    student_rng, teacher_rng = jax.random.split(rng)
    flat1 = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(stage1_params)[0]}

    def build(rng, copy_active: bool):
      def leaf(path, template):
        key = jax.tree_util.keystr(path)
        if 'new_query_embed' in key:
          if self.config.quirks.stage2_random_anchors:
            return jax.random.normal(rng, template.shape, template.dtype)
          return jnp.asarray(flat1[key.replace('new_query_embed', 'query_embed')])
        if '_active' in key:
          return jnp.asarray(flat1[key.replace('_active', '')]) if copy_active else template
        if key not in flat1:
          raise KeyError(f'stage-1 checkpoint has no parameter {key}')
        return jnp.asarray(flat1[key], template.dtype)
      return jax.tree_util.tree_map_with_path(leaf, stage2_template)

    return build(student_rng, True), build(teacher_rng, False)
