"""The AMR task on the task contract: model, stage-1/stage-2 losses, optimiser, Splice/curriculum data, inference.

Stage 2 keeps the frozen teacher as a separate pytree (`frozen_params`): no gradient, no optimiser state.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.ops import nms as nms_lib
from amr_jax.ops import optim as optim_lib
from amr_jax.projects import moment_task
from amr_jax.projects.amr import augment, curriculum
from amr_jax.projects.amr import losses as amr_losses
from amr_jax.projects.amr import postprocess as predict_lib
from amr_jax.projects.amr.model import AMR, AMRModelConfig
from data_pipelines.batches import seeded_rng

EVAL_OUTPUTS = ('pred_logits', 'pred_spans', 'iou_scores', 'saliency_scores')


class AMRTask(moment_task.MomentTask):
  """Binds a config to the AMR model and loss; every method is pure and jittable."""
  name = 'amr'

  def build(self):
    self.stage = self.config.model.stage
    self.model_config = AMRModelConfig.from_configs(self.config.model, self.config.quirks,
                                                    self.video_dim, self.text_dim)
    self.model = AMR(self.model_config)

  # -- data ---------------------------------------------------------------------------------------
  def wrap_train_split(self, split, records, cache):
    """Online Splice/Boost (data.augment=splice_online) and the easy-to-hard curriculum (data.curriculum)."""
    data = self.config.data
    if data.augment == 'splice_online':
      split.augmented, split.num_augmented, split.infos = augment.make_online_sampler(
          records, cache.video, seed=self.config.seed, passes=data.aug_passes)
    elif data.augment != 'none':
      raise ValueError(f'unknown data.augment {data.augment!r} (none | splice_online)')
    if data.curriculum == 'none':
      return moment_task.MomentTrainData(split)
    if data.curriculum != 'easy_to_hard':
      raise ValueError(f'unknown data.curriculum {data.curriculum!r} (none | easy_to_hard)')
    if split.infos is None:
      raise ValueError('the curriculum needs an augmented split (data.augment=splice_online)')
    difficulty = curriculum.difficulties_from_infos(split.infos)
    schedule = data.curriculum_schedule.to_dict()

    def order(seed, global_batch, num_steps):
      def indices(step: int) -> np.ndarray:
        weights = curriculum.sampling_weights(difficulty, step, num_steps, schedule)
        return curriculum.sample_indices(weights, global_batch, seeded_rng(seed, 'curriculum', step))
      return indices

    return moment_task.MomentTrainData(split, sample_order=order)

  # -- parameters ---------------------------------------------------------------------------------
  def init_model_params(self, rng: jax.Array, example_batch: dict):
    """The network's freshly initialised params (no stage-2 wiring)."""
    return self.init_model(rng, example_batch, train=False)

  def init_params(self, rng: jax.Array, example_batch: dict, teacher_params=None):
    params = self.init_model_params(rng, example_batch)
    if self.stage != 'distill':
      return params, None
    if teacher_params is None:
      raise ValueError('stage 2 needs --config.init.stage1_workdir (the stage-1 run to distil from)')
    return self.stage2_from_stage1(teacher_params, params, jax.random.fold_in(rng, 2))

  def teacher_workdir(self) -> str:
    if self.stage == 'distill' and not self.config.init.stage1_workdir:
      raise ValueError('stage 2 needs --config.init.stage1_workdir (the stage-1 run to distil from)')
    return self.config.init.stage1_workdir if self.stage == 'distill' else ''

  def optimizer(self, steps_per_epoch: int, num_steps: int):
    """Clip + AdamW with the StepLR schedule; params that get no gradient are frozen through optax."""
    del num_steps
    schedule = optim_lib.step_lr_schedule(self.config.optim.lr, self.config.optim.lr_drop, steps_per_epoch)
    return optim_lib.make_optimizer(self.config.optim, self.trainable_mask, lr_schedule=schedule)

  def apply(self, params, batch: dict, *, train: bool, rng=None, pass_a_only: bool = False):
    return self.apply_model(params, batch, train=train, pass_a_only=pass_a_only,
                            dropout_rng=rng if train else None)

  # -- training -----------------------------------------------------------------------------------
  def loss(self, params, frozen_params, batch: dict, rng: jax.Array, *, train: bool = True, indices=None):
    """(total, metrics); `train=False` runs both networks without dropout (parity checks)."""
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

  def postprocess_records(self, host_outputs: dict, records, num_clips) -> list[dict]:
    return predict_lib.submission_rows(
        host_outputs, [r.qid for r in records], [r.duration or n * 2.0 for r, n in zip(records, num_clips)],
        num_clips, [r.query for r in records], [r.vid for r in records],
        fixed_clamp_150=self.config.quirks.fixed_clamp_150)

  def merge_chunks(self, record, chunks: list, clip_len: float) -> dict:
    """Sliding windows: every chunk's ranked windows shifted to the video, NMS-merged; saliency averaged."""
    windows = []
    total = chunks[0][2]
    sal_sum, sal_cnt = np.zeros(total), np.zeros(total)
    for start, end, _, out in chunks:
      ranked = predict_lib.ranked_windows(out['pred_logits'], out['pred_spans'], out['iou_scores'],
                                          (end - start) * clip_len)
      offset = start * clip_len
      windows += [[st + offset, ed + offset, sc] for st, ed, sc in ranked]
      sal_sum[start:end] += out['saliency_scores'][:end - start]
      sal_cnt[start:end] += 1
    predict_cfg = self.config.get('predict', {})
    windows = nms_lib.nms_keep(windows, float(predict_cfg.get('merge_nms_iou', 0.7)), self.config.model.num_queries)
    duration = record.duration or (chunks[0][1] - chunks[0][0]) * clip_len   # as the first chunk (reference Predictor)
    windows = predict_lib.postprocess_windows(windows, None, duration)
    saliency = sal_sum / np.maximum(sal_cnt, 1)
    return dict(qid=record.qid, query=record.query, vid=record.vid, pred_relevant_windows=windows,
                pred_saliency_scores=predict_lib.saliency_fp16(saliency, len(saliency)))

  # -- stage 2 ------------------------------------------------------------------------------------
  def trainable_mask(self, params):
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


TASK = AMRTask
