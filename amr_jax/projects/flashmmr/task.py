"""The FlashMMR task on the task contract: targets from the generic MR batch, FlashVTG criterion + PV losses.

FlashMMR's labels are derived inside the jitted loss from the generic batch fields (fixed shapes, on device):
binary saliency from all GT windows, GT windows in seconds, <= 5 span labels, random pos/neg clips, and the
real-negative mask of the `--use_neg` pass. Decisions on the spec's open questions: configs/flashmmr.py and
docs/FLASHMMR.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.projects.flashmmr import losses as losses_lib
from amr_jax.projects.flashmmr import postprocess as post_lib
from amr_jax.projects.flashmmr import verifier as verifier_lib
from amr_jax.projects.flashmmr.model import FlashMMR, FlashMMRModelConfig
from amr_jax.data import annotations as ann_lib
from amr_jax.ops import optim as optim_lib
from amr_jax.ops import spans
from amr_jax.projects import moment_task

TEXT_POSITION_PARAMS = ('text_position_table', 'text_position_norm_scale', 'text_position_norm_bias')
# GT boundaries are rebuilt from normalised (centre, width) float32 labels; snapping them to 1 ms makes the
# integer-second annotations exact again (level assignment compares distances with the strides 2/4/8 exactly).
SNAP_SEC = 1e-3


def _dataclass_kwargs(cls, *sections) -> dict:
  """Fields of dataclass `cls` found in the given ConfigDict sections (later sections win)."""
  names = {f.name for f in dataclasses.fields(cls)}
  out = {}
  for section in sections:
    for key in section.keys():
      if key in names:
        out[key] = section[key]
  return out


def model_config_from(config, video_dim: int, text_dim: int) -> FlashMMRModelConfig:
  kwargs = _dataclass_kwargs(FlashMMRModelConfig, config.model, config.quirks)
  kwargs['strides'] = tuple(int(s) for s in kwargs.get('strides', (1, 2, 4, 8)))
  kwargs['scorer_channels'] = int(config.model.get('scorer_channels', 0)) or None
  kwargs['clip_length'] = float(config.data.clip_len)
  return FlashMMRModelConfig(video_feature_dim=video_dim, text_feature_dim=text_dim, **kwargs)


def loss_config_from(config) -> losses_lib.FlashMMRLossConfig:
  return losses_lib.FlashMMRLossConfig(**_dataclass_kwargs(losses_lib.FlashMMRLossConfig, config.loss,
                                                           config.quirks))


def verifier_config_from(config, hidden_dim: int) -> verifier_lib.FlashMMRVerifierConfig:
  kwargs = _dataclass_kwargs(verifier_lib.FlashMMRVerifierConfig, config.verifier)
  kwargs.update(lw_pv=float(config.loss.lw_pv), lw_repr=float(config.loss.lw_repr))
  return verifier_lib.FlashMMRVerifierConfig(input_dim=hidden_dim, clips_per_second=1.0 / float(config.data.clip_len),
                                             **kwargs)


def postprocess_config_from(config, max_num_moment: int) -> post_lib.FlashMMRPostprocessConfig:
  kwargs = _dataclass_kwargs(post_lib.FlashMMRPostprocessConfig, config.postprocess, config.quirks)
  return post_lib.FlashMMRPostprocessConfig(clip_length=float(config.data.clip_len), max_num_moment=max_num_moment,
                                            **kwargs)


# ----------------------------------------------------------------------------------------------------
# Targets from the generic batch (pure, fixed shapes).
# ----------------------------------------------------------------------------------------------------
def gt_windows_seconds(batch: dict, clip_len: float):
  """All GT windows of the batch in seconds: ([B, W, 2], valid [B, W]).

  The pipeline stores windows as (centre, width) normalised by the video length num_clips·clip_len (clipped to
  the video); num_windows says how many rows are real.
  """
  span = batch['span_labels_cxw']
  width = span.shape[1]
  valid = jnp.arange(width)[None, :] < batch['num_windows'][:, None]
  video_sec = batch['src_vid_mask'].sum(axis=1) * clip_len  # [B]
  starts = (span[..., 0] - span[..., 1] / 2) * video_sec[:, None]
  ends = (span[..., 0] + span[..., 1] / 2) * video_sec[:, None]
  windows = jnp.stack([starts, ends], axis=-1)
  windows = jnp.round(windows / SNAP_SEC) * SNAP_SEC
  return jnp.where(valid[..., None], windows, 0.0), valid


def select_span_labels(valid: jax.Array, rng: Optional[jax.Array], max_labels: int, mode: str) -> jax.Array:
  """Which GT windows become detection targets: [B, W] bool, at most `max_labels` per row.

  Args:
    valid: [B, W] real GT rows.
    rng: step rng (mode 'random').
    max_labels: cap (reference max_windows = 5).
    mode: 'random' (a uniformly random subset when a row has more), 'first' or 'all'.
  """
  if mode == 'all':
    return valid
  if mode == 'random':
    key = jax.random.uniform(rng, valid.shape)
  elif mode == 'first':
    key = jnp.broadcast_to(jnp.arange(valid.shape[1], dtype=jnp.float32), valid.shape)
  else:
    raise ValueError(f'unknown flashmmr.span_label_windows {mode!r} (random | first | all)')
  key = jnp.where(valid, key, jnp.inf)
  rank = jnp.argsort(jnp.argsort(key, axis=1), axis=1)
  return valid & (rank < max_labels)


def binary_saliency(batch: dict) -> jax.Array:
  """FlashMMR's binary clip labels: 1 for a valid clip inside any GT window (`mask_labels` of all windows)."""
  width = batch['mask_labels'].shape[1]
  valid = (jnp.arange(width)[None, :] < batch['num_windows'][:, None]).astype(jnp.float32)
  inside = jnp.max(batch['mask_labels'] * valid[..., None], axis=1)  # [B, L]
  return inside * batch['src_vid_mask']


def sample_clips(rng: jax.Array, allowed: jax.Array, fallback: jax.Array, num: int) -> jax.Array:
  """`num` distinct random clips per row from `allowed` ([B, L] bool), `fallback` rows when none is allowed.

  Gumbel top-k = sampling without replacement; rows with fewer than `num` allowed clips repeat the first draw.
  """
  use = jnp.where(jnp.any(allowed, axis=1, keepdims=True), allowed, fallback)
  gumbel = jax.random.gumbel(rng, use.shape)
  values, index = jax.lax.top_k(jnp.where(use, gumbel, -jnp.inf), num)  # [B, num]
  index = jnp.where(jnp.isfinite(values), index, index[:, :1])
  return index.astype(jnp.int32)


def flashmmr_targets(batch: dict, rng: jax.Array, *, clip_len: float, max_span_labels: int, span_mode: str,
                     num_pairs: int) -> dict:
  """The targets `flashmmr_losses` and the PV losses need, from the generic batch.

  Returns:
    dict: gt_windows_sec / gt_valid (detection targets, <= max_span_labels rows valid), gt_all / gt_all_valid
    (every GT window), fps [B], saliency_all_labels [B, L] (binary), saliency_pos_labels /
    saliency_neg_labels [B, num_pairs] (random in-GT / out-of-GT valid clips).
  """
  span_rng, pos_rng, neg_rng = jax.random.split(rng, 3)
  gt_all, gt_all_valid = gt_windows_seconds(batch, clip_len)
  span_valid = select_span_labels(gt_all_valid, span_rng, max_span_labels, span_mode)
  labels = binary_saliency(batch)
  clip_valid = batch['src_vid_mask'] > 0
  inside = labels > 0
  pos = sample_clips(pos_rng, inside, clip_valid, num_pairs)
  neg = sample_clips(neg_rng, clip_valid & ~inside, clip_valid, num_pairs)
  batch_size = labels.shape[0]
  return dict(gt_windows_sec=gt_all, gt_valid=span_valid, gt_all=gt_all, gt_all_valid=gt_all_valid,
              fps=jnp.full((batch_size,), 1.0 / clip_len, jnp.float32), saliency_all_labels=labels,
              saliency_pos_labels=pos, saliency_neg_labels=neg)


def original_vid(vid: str) -> str:
  """The YouTube id of a QVHighlights vid: the last two '_' fields (clip start / end) stripped."""
  parts = vid.rsplit('_', 2)
  return parts[0] if len(parts) == 3 else (vid.split('_', 1)[0] if '_' in vid else vid)


def _stable_code(text: str) -> int:
  return int.from_bytes(hashlib.sha256(text.encode('utf-8')).digest()[:4], 'little') & 0x7FFFFFFF


def video_code_table(records) -> tuple[np.ndarray, np.ndarray]:
  """Sorted qids [N] int32 and the code of their original (YouTube) video [N] int32."""
  table = {int(r.qid): _stable_code(original_vid(r.vid)) for r in records}
  qids = np.array(sorted(table), np.int32)
  return qids, np.array([table[int(q)] for q in qids], np.int32)


# ----------------------------------------------------------------------------------------------------
# The task.
# ----------------------------------------------------------------------------------------------------
class FlashMMRTask(moment_task.MomentTask):
  """Binds a config to FlashMMR + its verifier; params = {'model': ..., 'verifier': ...}; pure and jittable."""
  name = 'flashmmr'

  def build(self):
    cfg = self.config
    if cfg.model.get('precision', 'fp32') != 'fp32':
      raise ValueError(f'FlashMMR supports model.precision=fp32 only, got {cfg.model.precision!r}')
    self.stage = cfg.model.get('stage', 'flashmmr')
    self.model_config = model_config_from(cfg, self.video_dim, self.text_dim)
    self.loss_config = loss_config_from(cfg)
    self.verifier_config = verifier_config_from(cfg, self.model_config.hidden_dim)
    self.post_config = postprocess_config_from(cfg, self.model_config.max_num_moment)
    self.model = FlashMMR(self.model_config)
    self.verifier = verifier_lib.PostVerificationGRU(self.verifier_config)
    self.clip_len = float(cfg.data.clip_len)
    self._vid_table = None   # set by train_data: the loss needs it, inference (and an export) does not
    if cfg.flashmmr.real_neg_source not in ('annotations', 'features', 'none'):
      raise ValueError(f'unknown flashmmr.real_neg_source {cfg.flashmmr.real_neg_source!r}')

  def train_data(self):
    data = super().train_data()
    if self.config.flashmmr.real_neg_source == 'annotations':
      self._vid_table = self.load_video_table()
    return data

  def load_video_table(self):
    """qid -> original-video code over the train + val annotation files (real_neg_source='annotations')."""
    records = []
    for paths in (self.config.data.train_annotations, self.config.data.val_annotations):
      if paths:
        records += ann_lib.load_many(paths)
    return video_code_table(records)

  # -- parameters ---------------------------------------------------------------------------------
  def init_model_params(self, rng: jax.Array, batch: dict):
    return self.init_params(rng, batch)[0]

  def init_params(self, rng: jax.Array, batch: dict, teacher_params=None):
    del teacher_params
    model_rng, verifier_rng = jax.random.split(rng)
    model_params = self.init_model(model_rng, batch, None, deterministic=True)
    vcfg = self.verifier_config
    crops = jnp.zeros((1, vcfg.max_crop_len, self.model_config.hidden_dim), jnp.float32)
    verifier_vars = self.verifier.init({'params': verifier_rng}, crops, jnp.ones((1,), jnp.int32), True)
    return {'model': model_params, 'verifier': verifier_vars['params']}, None

  def optimizer(self, steps_per_epoch: int, num_steps: int):
    """Clip + AdamW with the StepLR schedule; the unused text positions / verifier frozen through optax."""
    del num_steps
    schedule = optim_lib.step_lr_schedule(self.config.optim.lr, self.config.optim.lr_drop, steps_per_epoch)
    return optim_lib.make_optimizer(self.config.optim, self.trainable_mask, lr_schedule=schedule)

  def trainable_mask(self, params):
    """False for the unused text position table (use_txt_pos=False) and for an unused verifier."""
    frozen = () if self.model_config.use_txt_pos else TEXT_POSITION_PARAMS
    model = {k: jax.tree.map(lambda _, k=k: k not in frozen, v) for k, v in params['model'].items()}
    enabled = bool(self.config.verifier.enabled)
    return {'model': model, 'verifier': jax.tree.map(lambda _: enabled, params['verifier'])}

  # -- targets ------------------------------------------------------------------------------------
  def targets(self, batch: dict, rng: jax.Array) -> dict:
    t = self.config.flashmmr
    return flashmmr_targets(batch, rng, clip_len=self.clip_len, max_span_labels=int(t.max_span_labels),
                            span_mode=t.span_label_windows, num_pairs=int(t.saliency_pairs))

  def real_negative_mask(self, batch: dict) -> jax.Array:
    """[B] bool: sample b's rolled partner (b + 1 mod B) comes from another video (reference `real_neg_mask`)."""
    source = self.config.flashmmr.real_neg_source
    batch_size = batch['src_vid'].shape[0]
    if source == 'none':
      return jnp.ones((batch_size,), bool)
    # Feature fingerprint: identical videos give bit-identical numbers.
    weights = jnp.sin(jnp.arange(batch['src_vid'].shape[-1], dtype=jnp.float32) * 0.7311 + 0.1)
    fingerprint = jnp.einsum('bld,d->b', batch['src_vid'], weights)
    same = fingerprint == jnp.roll(fingerprint, -1)
    if source == 'annotations':
      if self._vid_table is None:   # a loss outside train_data() (tests, benchmarks): read the files now
        self._vid_table = self.load_video_table()
      qids, codes = self._vid_table
      qid = batch['qid'].astype(jnp.int32)
      if len(qids):
        idx = jnp.clip(jnp.searchsorted(jnp.asarray(qids), qid), 0, len(qids) - 1)
        found = jnp.asarray(qids)[idx] == qid
        code = jnp.asarray(codes)[idx]
        both = found & jnp.roll(found, -1)
        same = jnp.where(both, code == jnp.roll(code, -1), same)
    return ~same

  def proposals(self, outputs: dict) -> jax.Array:
    """[B, P, 3] decoded windows sorted by score among valid pyramid points (padded points last, stable)."""
    decoded = outputs['decoded_unsorted']
    ranking = jnp.where(outputs['pymid_msk'] > 0, decoded[..., 2], -1.0)
    order = jnp.argsort(-ranking, axis=1, stable=True)
    return jnp.take_along_axis(decoded, order[..., None], axis=1), jnp.take_along_axis(
        outputs['pymid_msk'] > 0, order, axis=1)

  # -- training -----------------------------------------------------------------------------------
  def apply(self, params, batch: dict, *, train: bool, rng=None, real_neg=None):
    return self.apply_model(params['model'], batch, real_neg, deterministic=not train,
                            dropout_rng=rng if train else None)

  def loss(self, params, frozen_params, batch: dict, rng: jax.Array, *, train: bool = True, indices=None):
    del frozen_params, indices
    drop_rng, target_rng, pv_rng = jax.random.split(rng, 3)
    targets = self.targets(batch, target_rng)
    real_neg = self.real_negative_mask(batch) if self.loss_config.use_neg else None
    outputs = self.apply(params, batch, train=train, rng=drop_rng, real_neg=real_neg)
    total, terms = losses_lib.flashmmr_losses(outputs, targets, self.loss_config)
    metrics = {f'loss/{k[len("loss_weighted."):]}': v for k, v in terms.items() if k.startswith('loss_weighted.')}
    # Attention mass of valid clips on the text tokens (vs. the dummies): ~0 = the text path has collapsed.
    clip_valid = batch['src_vid_mask']
    metrics['model/text_attn_mass'] = (outputs['t2vattnvalues'] * clip_valid).sum() / jnp.maximum(clip_valid.sum(), 1)
    if self.config.verifier.enabled:
      proposal_se, _ = self.proposals(outputs)
      pv_total, pv = verifier_lib.post_verification_losses(
          self.verifier, params['verifier'], outputs['memory'], batch['src_vid_mask'], proposal_se, batch['duration'],
          targets['gt_all'], targets['gt_all_valid'], self.verifier_config, self.clip_len,
          deterministic=not train, rngs={'dropout': pv_rng} if train else None)
      total = total + pv_total
      metrics['loss/loss_pv'] = pv['loss_pv'] * self.verifier_config.lw_pv
      metrics['loss/loss_repr'] = pv['loss_repr'] * self.verifier_config.lw_repr
      metrics['verifier/pred_iou_corr'] = pearson(jax.nn.sigmoid(pv['scores_raw']), pv['iou_hat'],
                                                  pv['crop_valid'])
    if real_neg is not None:
      metrics['data/real_neg_frac'] = real_neg.astype(jnp.float32).mean()
    return total, metrics

  # -- inference ----------------------------------------------------------------------------------
  def eval_forward(self, params, batch: dict) -> dict:
    """Top-K windows (seconds, by detector score over valid points), saliency, verifier IoU of each window."""
    outputs = self.apply(params, batch, train=False)
    proposal_se, valid = self.proposals(outputs)
    k = min(self.model_config.max_num_moment, proposal_se.shape[1])
    result = dict(boundary=proposal_se[:, :k], boundary_valid=valid[:, :k], saliency=outputs['saliency_scores'])
    if self.config.flashmmr.eval_verifier or self.config.flashmmr.rescore_with_verifier:
      scored = verifier_lib.score_proposals(self.verifier, params['verifier'], outputs['memory'],
                                            batch['src_vid_mask'], proposal_se[:, :k], batch['duration'],
                                            self.verifier_config, self.clip_len)
      raw = scored['scores_raw']
      result['verifier_iou'] = jax.nn.sigmoid(raw) if self.verifier_config.apply_sigmoid else raw
      result['verifier_windows'] = scored['windows']
      result['verifier_valid'] = scored['lengths'] > 0
    return result

  def postprocess_records(self, host_outputs: dict, records, num_clips) -> list[dict]:
    """QVHighlights-format rows: top-50 → clamp to [0, duration] → clip_ts + 2 s rounding → NMS 0.7."""
    rows = []
    rescore = bool(self.config.flashmmr.rescore_with_verifier)
    for i, record in enumerate(records):
      n = int(num_clips[i])
      keep = np.asarray(host_outputs['boundary_valid'][i], bool)
      boundary = np.array(host_outputs['boundary'][i], np.float32)
      if rescore:
        boundary[:, 2] *= np.asarray(host_outputs['verifier_iou'][i], np.float32)
      boundary = boundary[keep]
      duration = float(record.duration or n * self.clip_len)
      stage1 = post_lib.clamp_rows(boundary, duration)
      stage2 = post_lib.postprocess_rows(stage1, self.post_config)
      stage3 = post_lib.nms_rows(stage2, self.post_config)
      saliency = [post_lib.round4(float(s)) for s in np.asarray(host_outputs['saliency'][i])[:n]]
      rows.append(post_lib.submission_record(record.qid, record.query, record.vid, stage3, saliency))
    return rows


  def diagnostics(self, params, data, run, batch_size: int) -> dict:
    """Does the verifier's predicted IoU track the true IoU of a proposal? (Pearson over every crop)."""
    if not (self.config.flashmmr.eval_verifier or self.config.flashmmr.rescore_with_verifier) or \
        data.ground_truth is None:
      return {}
    preds, trues = [], []
    for host_outputs, host_batch in run(self.eval_forward, params, data, batch_size):
      p, t = verifier_iou_pairs(host_outputs, [data.by_qid[int(q)] for q in host_batch['qid']])
      preds.append(p)
      trues.append(t)
    p, t = np.concatenate(preds), np.concatenate(trues)
    return {'verifier_iou_pearson': pearson_np(p, t), 'verifier_num_pairs': int(len(p))}


TASK = FlashMMRTask


# ----------------------------------------------------------------------------------------------------
# Verifier diagnostics: does the predicted IoU track the true IoU of a proposal?
# ----------------------------------------------------------------------------------------------------
def pearson(x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
  """Masked Pearson correlation of two equally shaped arrays (0 when either side has no variance)."""
  w = mask.astype(jnp.float32)
  n = jnp.maximum(w.sum(), 1.0)
  mx, my = (x * w).sum() / n, (y * w).sum() / n
  cov = ((x - mx) * (y - my) * w).sum()
  vx, vy = (jnp.square(x - mx) * w).sum(), (jnp.square(y - my) * w).sum()
  return jnp.where((vx > 0) & (vy > 0), cov / jnp.sqrt(jnp.maximum(vx * vy, 1e-30)), 0.0)


def verifier_iou_pairs(host_outputs: dict, records: Sequence) -> tuple[np.ndarray, np.ndarray]:
  """(predicted IoU, true max tIoU over ALL GT windows of the record) of every non-empty verifier crop."""
  preds, trues = [], []
  for i, record in enumerate(records):
    if not record.windows:
      continue
    windows = np.asarray(host_outputs['verifier_windows'][i], np.float64)
    keep = np.asarray(host_outputs['verifier_valid'][i], bool)
    gt = np.asarray(record.windows, np.float64).reshape(-1, 2)
    iou = spans.np_temporal_iou_pairwise(windows, gt).max(axis=1)
    preds.append(np.asarray(host_outputs['verifier_iou'][i], np.float64)[keep])
    trues.append(iou[keep])
  if not preds:
    return np.zeros(0), np.zeros(0)
  return np.concatenate(preds), np.concatenate(trues)


def pearson_np(x: np.ndarray, y: np.ndarray) -> float:
  if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
    return 0.0
  return float(np.corrcoef(x, y)[0, 1])
