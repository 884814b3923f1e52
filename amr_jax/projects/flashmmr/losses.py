"""FlashMMR / FlashVTG training losses as pure, jittable, fixed-shape JAX functions.

Centre-sampled anchor targets, focal/L1/SampledNCE, the saliency package and the label loss, script-weighted.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp

# The point generator lives with the network (it needs the pyramid geometry); re-exported for loss users.
from amr_jax.projects.flashmmr.model import anchor_points, pyramid_level_sizes, regression_ranges  # noqa: F401

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class FlashMMRLossConfig:
  """Weights and hyper-parameters of the FlashVTG criterion (`train_qv_slowclip.sh`) plus quirk switches.

  Attributes:
    lw_cls, lw_reg, lw_sal, lw_saliency, label_loss_coef: weights of loss_cls, loss_reg, loss_sal,
      loss_saliency and loss_label in the total.
    lw_wattn: weight of the attention half inside loss_saliency.
    sample_radius: centre-sampling radius in strides.
    focal_alpha, focal_gamma: nncore focal loss (alpha < 0 = no alpha weighting).
    nce_temperature, nce_max_scale: SampledNCE fixed temperature and scale clamp.
    saliency_margin: hinge margin of the pos/neg clip pairs.
    rank_tau: rank-contrastive temperature.
    rank_levels: rank thresholds 1..rank_levels−1 are visited; the sum is divided by rank_levels (12).
    use_neg: the negative-pair (video, next sample's query) terms; needs `real_neg_mask` in the outputs.
    youtube_uni: zero the negative-pair terms as the reference does for dset `youtube_uni`.
    centre_sampling_inclusive_bounds: §9.8 both regression-range ends inclusive, so a distance of exactly 2 or 4
      qualifies on two levels (False: half-open [lo, hi)).
    label_loss_includes_padding: §9.3 loss_label min-max-normalises and averages over padded clips too (False:
      valid clips only).
    attn_bce_includes_padding: §9.3 the attention BCE averages over all B·L positions (False: valid clips only).
    falseneg_single_row_degenerate: §9.6 with exactly one false-negative row the reference's `.unsqueeze(0)`
      turns the rank-contrastive term into ≈1e-6·(#pos/L)/12 (False: the ordinary term on that row).
    attn_falseneg_term_dead: §9.6 the attention branch's false-negative term is added after its variable was
      consumed, i.e. dropped (False: it is added to the attention half).
    neg_pair_log_unclamped: §9.6 `−log(1 − a)` with a = 1 gives inf (False: 1 − a is floored at 1e-12).
  """
  lw_cls: float = 5.0
  lw_reg: float = 1.0
  lw_sal: float = 0.1
  lw_saliency: float = 0.8
  label_loss_coef: float = 4.0
  lw_wattn: float = 1.0
  sample_radius: float = 1.5
  focal_alpha: float = -1.0
  focal_gamma: float = 2.0
  nce_temperature: float = 0.07
  nce_max_scale: float = 100.0
  saliency_margin: float = 0.2
  rank_tau: float = 0.5
  rank_levels: int = 12
  use_neg: bool = True
  youtube_uni: bool = False
  centre_sampling_inclusive_bounds: bool = True
  label_loss_includes_padding: bool = True
  attn_bce_includes_padding: bool = True
  falseneg_single_row_degenerate: bool = True
  attn_falseneg_term_dead: bool = True
  neg_pair_log_unclamped: bool = True

  @classmethod
  def from_fixture(cls, tiny_config: Mapping[str, Any], **overrides) -> "FlashMMRLossConfig":
    args = dict(tiny_config.get("args", {}))
    args.update({k: v for k, v in tiny_config.get("TINY", {}).items() if k not in args})
    loss_cfg = tiny_config.get("cfg_model", {}).get("loss_cfg", {})
    kwargs = dict(
        lw_cls=float(args["lw_cls"]),
        lw_reg=float(args["lw_reg"]),
        lw_sal=float(args["lw_sal"]),
        lw_saliency=float(args["lw_saliency"]),
        label_loss_coef=float(args["label_loss_coef"]),
        lw_wattn=float(args.get("lw_wattn", 1.0)),
        sample_radius=float(loss_cfg.get("sample_radius", args.get("sample_radius", 1.5))),
        nce_temperature=float(args.get("temperature", 0.07)),
        saliency_margin=float(args["saliency_margin"]),
        use_neg=bool(args.get("use_neg", True)),
        youtube_uni=args.get("dset_name", "hl") == "youtube_uni",
    )
    kwargs.update(overrides)
    return cls(**kwargs)

  @property
  def weights(self) -> Dict[str, float]:
    return dict(loss_reg=self.lw_reg, loss_cls=self.lw_cls, loss_sal=self.lw_sal, loss_saliency=self.lw_saliency,
                loss_label=self.label_loss_coef)


# ----------------------------------------------------------------------------------------------------------------
# Anchor targets.


def point_targets_single(points: Array, gt_windows: Array, gt_valid: Array, sample_radius: float,
                         inclusive_bounds: bool = True) -> Tuple[Array, Array]:
  """Centre-sampling targets of one sample (reference `BundleLoss.get_target_single`).

  A point (t, lo, hi, stride) qualifies for GT (s, e) when t ∈ [max(c − r·stride, s), min(c + r·stride, e)]
  (c the GT centre) and max(t − s, e − t) ∈ [lo, hi]. cls = 1 if any GT qualifies; reg = ((t − s), (e − t)) /
  stride of the shortest qualifying GT (first index on exact ties; argmin 0 when none qualifies).

  Args:
    points: [P, 4] anchor points in clip units.
    gt_windows: [G, 2] GT (start, end) in clip units (padding rows arbitrary, e.g. inf).
    gt_valid: [G] bool.
    sample_radius: r.
    inclusive_bounds: both regression-range ends inclusive (reference) or half-open.

  Returns:
    cls_tgt [P] float32, reg_tgt [P, 2] float32.
  """
  t = points[:, 0:1]  # [P, 1]
  lo, hi, stride = points[:, 1:2], points[:, 2:3], points[:, 3:4]
  starts, ends = gt_windows[None, :, 0], gt_windows[None, :, 1]  # [1, G]
  dist_start = t - starts  # [P, G]
  dist_end = ends - t
  if sample_radius > 0:
    centre = (starts + ends) / 2
    t_min = jnp.maximum(centre - stride * sample_radius, starts)
    t_max = jnp.minimum(centre + stride * sample_radius, ends)
    cls_mask = jnp.minimum(t - t_min, t_max - t) >= 0
  else:
    cls_mask = jnp.minimum(dist_start, dist_end) >= 0
  reg_dist = jnp.maximum(dist_start, dist_end)
  if inclusive_bounds:
    reg_mask = (reg_dist >= lo) & (reg_dist <= hi)
  else:
    reg_mask = (reg_dist >= lo) & (reg_dist < hi)
  qualifies = cls_mask & reg_mask & gt_valid[None, :]  # [P, G]
  lengths = jnp.where(qualifies, ends - starts, jnp.inf)  # [P, G]
  min_len = lengths.min(axis=1)
  min_idx = jnp.argmin(lengths, axis=1)  # first index on ties; 0 for an all-inf row
  min_len_mask = (lengths <= min_len[:, None] + 1e-3) & (lengths < jnp.inf)
  cls_tgt = jnp.clip(min_len_mask.astype(jnp.float32).sum(axis=1), 0.0, 1.0)
  reg = jnp.stack([dist_start, dist_end], axis=-1)  # [P, G, 2]
  reg_tgt = jnp.take_along_axis(reg, min_idx[:, None, None], axis=1)[:, 0] / stride  # [P, 2]
  return cls_tgt, reg_tgt


def point_targets(points: Array, gt_windows_sec: Array, gt_valid: Array, fps: Array, sample_radius: float,
                  inclusive_bounds: bool = True) -> Tuple[Array, Array]:
  """Batched `point_targets_single`; GT windows are given in seconds and scaled by `fps` (clips per second).

  Args:
    points: [P, 4].
    gt_windows_sec: [B, G, 2] seconds.
    gt_valid: [B, G] bool.
    fps: [B] clips per second (1 / clip_length).
    sample_radius: r.
    inclusive_bounds: see `point_targets_single`.

  Returns:
    cls_tgt [B, P], reg_tgt [B, P, 2].
  """
  gt_clip = gt_windows_sec * fps[:, None, None]
  # Padding rows may be inf; replace them so no nan leaks into the (discarded) arithmetic.
  gt_clip = jnp.where(gt_valid[:, :, None], gt_clip, 0.0)
  fn = lambda g, v: point_targets_single(points, g, v, sample_radius, inclusive_bounds)
  return jax.vmap(fn)(gt_clip, gt_valid)


# ----------------------------------------------------------------------------------------------------------------
# BundleLoss terms.


def sigmoid_focal_loss(logits: Array, targets: Array, alpha: float = -1.0, gamma: float = 2.0) -> Array:
  """Elementwise nncore focal loss on logits (no reduction)."""
  p = jax.nn.sigmoid(logits)
  ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  p_t = p * targets + (1 - p) * (1 - targets)
  loss = ce * (1 - p_t)**gamma
  if alpha >= 0:
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
  return loss


def classification_loss(out_class: Array, cls_tgt: Array, point_mask: Array, config: FlashMMRLossConfig) -> Array:
  """loss_cls: Σ focal·mask / Σ mask over all pyramid points (no eps, as nncore with avg_factor)."""
  weight = point_mask.astype(jnp.float32)
  loss = sigmoid_focal_loss(out_class[..., 0], cls_tgt, config.focal_alpha, config.focal_gamma) * weight
  return loss.sum() / weight.sum()


def regression_loss(out_coord: Array, reg_tgt: Array, cls_tgt: Array) -> Array:
  """loss_reg: Σ |out − tgt| at positive points / (2·#positives); 0 when there is no positive."""
  mask = jnp.repeat(cls_tgt[..., None], 2, axis=-1)  # [B, P, 2]
  # reg_tgt of non-positive points may be large or inf-derived; zero them before the product.
  diff = jnp.where(mask > 0, jnp.abs(out_coord - jnp.where(mask > 0, reg_tgt, 0.0)), 0.0)
  total = mask.sum()
  return jnp.where(total > 0, diff.sum() / jnp.maximum(total, 1.0), 0.0)


def _safe_norm(x: Array, eps: float) -> Array:
  """max(‖x‖, eps) along the last axis with a finite gradient at x = 0."""
  return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))


def _cosine_similarity(x: Array, y: Array, eps: float = 1e-8) -> Array:
  """torch `F.cosine_similarity` (norms clamped at eps); all-zero rows give 0 with a finite gradient."""
  x_norm = _safe_norm(x, eps)
  y_norm = _safe_norm(y, eps)
  return jnp.sum((x / x_norm) * (y / y_norm), axis=-1)


def sampled_nce_loss(video_emb: Array, query_emb: Array, video_mask: Array, saliency: Array, pos_clip: Array,
                     config: FlashMMRLossConfig) -> Array:
  """loss_sal: SampledNCE in the row (over clips) and column (over the batch) directions.

  Args:
    video_emb: [B, L, D] (ReLU(F) in the reference, §9.1).
    query_emb: [B, 1, D].
    video_mask: [B, L].
    saliency: [B, L] saliency labels; clips with higher label than the positive are excluded.
    pos_clip: [B] positive clip index.
    config: loss config.

  Returns:
    scalar.
  """
  batch = jnp.arange(video_emb.shape[0])
  pos_scores = saliency[batch, pos_clip][:, None]
  loss_mask = (saliency <= pos_scores) & (video_mask > 0)
  scale = jnp.minimum(jnp.exp(jnp.float32(math.log(1 / config.nce_temperature))), config.nce_max_scale)
  sim = _cosine_similarity(video_emb, query_emb) * scale  # [B, L]
  sim = jnp.where(loss_mask, sim, -jnp.inf)
  row = jax.nn.log_softmax(sim, axis=1)[batch, pos_clip]
  col = jax.nn.log_softmax(sim.T, axis=1)[pos_clip, batch]
  return -row.sum() / row.shape[0] - col.sum() / col.shape[0]


# ----------------------------------------------------------------------------------------------------------------
# Saliency package (QD-DETR / CG-DETR, FlashVTG `SetCriterion.loss_saliency`).


def rank_contrastive_loss(scores: Array, labels: Array, token_mask: Array, row_mask: Array,
                          config: FlashMMRLossConfig) -> Array:
  """Rank-contrastive term over the rows selected by `row_mask` (mean over those rows), fixed shape.

  Args:
    scores: [N, M] scores; padded columns already set to −1000 by the caller.
    labels: [N, M] saliency labels.
    token_mask: [N, M] 1 = valid column.
    row_mask: [N] bool rows that exist in the reference's sub-batch.
    config: loss config.

  Returns:
    scalar Σ_r mean_rows(...) / rank_levels.
  """
  rows = row_mask.astype(jnp.float32)
  num_rows = jnp.maximum(rows.sum(), 1.0)
  total = jnp.float32(0.0)
  for rank in range(1, config.rank_levels):
    drop_mask = ~(labels > 100)
    pos_mask = (labels >= rank) & row_mask[:, None]
    any_pos = jnp.sum(pos_mask) > 0
    row_has_pos = (jnp.sum(pos_mask, axis=1) > 0).astype(jnp.float32)
    cur = scores * drop_mask / config.rank_tau + (~drop_mask) * -1e3
    logits = cur - jnp.max(cur, axis=1, keepdims=True)
    log_prob = logits - jnp.log(jnp.exp(logits).sum(axis=1, keepdims=True) + 1e-6)
    pos = pos_mask.astype(jnp.float32)
    mean_log_prob_pos = (pos * log_prob * token_mask).sum(axis=1) / (pos.sum(axis=1) + 1e-6)
    loss = -mean_log_prob_pos * row_has_pos * rows
    total = total + jnp.where(any_pos, loss.sum() / num_rows, 0.0)
  return total / config.rank_levels


def _degenerate_single_row_rank_loss(labels: Array, token_mask: Array, row_mask: Array,
                                     config: FlashMMRLossConfig) -> Array:
  """§9.6: the (1, 1, L) `.unsqueeze(0)` path; softmax over a size-1 axis, so every logit is 0 (no gradient)."""
  log_prob = -jnp.log(jnp.float32(1.0) + jnp.float32(1e-6))
  length = labels.shape[1]
  total = jnp.float32(0.0)
  for rank in range(1, config.rank_levels):
    pos = ((labels >= rank) & row_mask[:, None]).astype(jnp.float32)  # only the single selected row
    mean_log_prob_pos = pos * log_prob * token_mask / (pos + 1e-6)
    loss = -mean_log_prob_pos * (pos > 0)
    total = total + jnp.where(pos.sum() > 0, loss.sum() / length, 0.0)
  return total / config.rank_levels


def _hinge_loss(scores: Array, pos_idx: Array, neg_idx: Array, margin: float) -> Array:
  batch = jnp.arange(scores.shape[0])[:, None]
  pos = scores[batch, pos_idx]  # [B, pairs]
  neg = scores[batch, neg_idx]
  return jnp.maximum(margin + neg - pos, 0).sum() / (pos.shape[0] * pos.shape[1]) * 2


def _binary_cross_entropy(probs: Array, labels: Array) -> Array:
  """torch BCELoss elementwise (log clamped at −100)."""
  log_p = jnp.maximum(jnp.log(probs), -100.0)
  log_1mp = jnp.maximum(jnp.log(1 - probs), -100.0)
  return -(labels * log_p + (1 - labels) * log_1mp)


def _neg_pair_loss(neg_probs: Array, token_mask: Array, row_mask: Array, unclamped: bool) -> Array:
  one_minus = 1.0 - neg_probs
  if not unclamped:
    one_minus = jnp.maximum(one_minus, 1e-12)
  per_row = (-jnp.log(one_minus) * token_mask).sum(axis=1)
  rows = row_mask.astype(jnp.float32)
  return (per_row * rows).sum() / jnp.maximum(rows.sum(), 1.0)


def _realneg_rank_inputs(scores: Array, scores_neg: Array, labels: Array, token_mask: Array):
  cat_scores = jnp.concatenate([scores, scores_neg], axis=1)  # [B, 2L]
  cat_labels = jnp.concatenate([labels, jnp.zeros_like(labels)], axis=1)
  cat_mask = jnp.concatenate([token_mask, token_mask], axis=1)
  cat_scores = cat_mask * cat_scores + (1.0 - cat_mask) * -1e3
  return cat_scores, cat_labels, cat_mask


def _falseneg_rank_loss(scores: Array, labels: Array, token_mask: Array, false_neg: Array,
                        config: FlashMMRLossConfig) -> Array:
  count = false_neg.astype(jnp.int32).sum()
  masked_scores = token_mask * scores + (1.0 - token_mask) * -1e3
  ordinary = rank_contrastive_loss(masked_scores, labels, token_mask, false_neg, config)
  if config.falseneg_single_row_degenerate:
    degenerate = _degenerate_single_row_rank_loss(labels, token_mask, false_neg, config)
    ordinary = jnp.where(count == 1, degenerate, ordinary)
  return jnp.where(count > 0, ordinary, 0.0)


def saliency_loss(outputs: Mapping[str, Array], saliency_labels: Array, pos_idx: Array, neg_idx: Array,
                  config: FlashMMRLossConfig) -> Tuple[Array, Dict[str, Array]]:
  """loss_saliency with the negative-pair branch (reference `SetCriterion.loss_saliency`), fixed shape.

  The branch with negatives runs when `use_neg` and at least one row has a real negative; otherwise the
  batch-size-1 branch (no negative terms) is used. `saliency_scores_neg` / `t2vattnvalues_neg` hold all B rows;
  only `real_neg_mask` rows enter.

  Args:
    outputs: model outputs (`saliency_scores`, `t2vattnvalues`, `video_msk`, and the `*_neg` / `real_neg_mask`).
    saliency_labels: [B, L] `saliency_all_labels`.
    pos_idx, neg_idx: [B, pairs] sampled clip indices.
    config: loss config.

  Returns:
    (loss_saliency, parts) where parts uses the fixture `loss_saliency_part.*` names.
  """
  token_mask = outputs["video_msk"].astype(jnp.float32)  # [B, L]
  sal = outputs["saliency_scores"]
  attn = outputs["t2vattnvalues"]
  batch = sal.shape[0]
  neg_weight = 0.0 if config.youtube_uni else 1.0
  have_neg = config.use_neg and "saliency_scores_neg" in outputs and outputs.get("real_neg_mask") is not None
  parts: Dict[str, Array] = {}

  # --- Branch without negatives (batch size 1 / no real negative).
  all_rows = jnp.ones((batch,), bool)
  masked_sal = token_mask * sal + (1.0 - token_mask) * -1e3
  masked_attn = token_mask * attn + (1.0 - token_mask) * -1e3
  plain_vid = _hinge_loss(sal, pos_idx, neg_idx, config.saliency_margin) + rank_contrastive_loss(
      masked_sal, saliency_labels, token_mask, all_rows, config)
  bce_labels = jnp.clip(saliency_labels, 0, 1)
  bce = _binary_cross_entropy(attn, bce_labels)
  if config.attn_bce_includes_padding:
    bce = bce.mean()
  else:
    bce = (bce * token_mask).sum() / jnp.maximum(token_mask.sum(), 1.0)
  plain_attn = rank_contrastive_loss(masked_attn, saliency_labels, token_mask, all_rows, config) + bce + \
      _hinge_loss(attn, pos_idx, neg_idx, config.saliency_margin)
  plain_total = plain_vid + config.lw_wattn * plain_attn
  if not have_neg:
    return plain_total, dict(plain_vid=plain_vid, plain_attn=plain_attn)

  real_neg = outputs["real_neg_mask"].astype(bool)
  false_neg = ~real_neg
  sal_neg = outputs["saliency_scores_neg"]
  attn_neg = outputs["t2vattnvalues_neg"]

  # --- Video part.
  vid_neg_pair = _neg_pair_loss(jax.nn.sigmoid(sal_neg), token_mask, real_neg, config.neg_pair_log_unclamped)
  cat_scores, cat_labels, cat_mask = _realneg_rank_inputs(sal, sal_neg, saliency_labels, token_mask)
  vid_rank_real = rank_contrastive_loss(cat_scores, cat_labels, cat_mask, real_neg, config)
  vid_rank_false = _falseneg_rank_loss(sal, saliency_labels, token_mask, false_neg, config)
  vid_hinge = _hinge_loss(sal, pos_idx, neg_idx, config.saliency_margin)
  vid_total = vid_hinge + (vid_rank_real + vid_rank_false) + vid_neg_pair * neg_weight

  # --- Attention part.
  attn_neg_pair = _neg_pair_loss(attn_neg, token_mask, real_neg, config.neg_pair_log_unclamped)
  cat_scores, cat_labels, cat_mask = _realneg_rank_inputs(attn, attn_neg, saliency_labels, token_mask)
  attn_rank_real = rank_contrastive_loss(cat_scores, cat_labels, cat_mask, real_neg, config)
  attn_rank_false = _falseneg_rank_loss(attn, saliency_labels, token_mask, false_neg, config)
  attn_hinge = _hinge_loss(attn, pos_idx, neg_idx, config.saliency_margin)
  attn_total = attn_rank_real + bce + attn_neg_pair * neg_weight + attn_hinge
  if not config.attn_falseneg_term_dead:
    attn_total = attn_total + attn_rank_false
  neg_total = vid_total + config.lw_wattn * attn_total

  parts.update({
      "vid.neg_pair": vid_neg_pair,
      "vid.rankcon_realneg": vid_rank_real,
      "vid.rankcon_falseneg": vid_rank_false,
      "vid.hinge": vid_hinge,
      "attn.neg_pair": attn_neg_pair,
      "attn.rankcon_realneg": attn_rank_real,
      "attn.rankcon_falseneg_DEAD": attn_rank_false,
      "attn.hinge": attn_hinge,
      "attn.bce": bce,
      "vid.total": vid_total,
      "attn.total": attn_total,
  })
  any_real = jnp.any(real_neg)
  total = jnp.where(any_real, neg_total, plain_total)
  parts["recomputed_loss_saliency"] = total
  return total, parts


def label_loss(out_class: Array, saliency_labels: Array, video_mask: Array, config: FlashMMRLossConfig) -> Array:
  """loss_label: MSE of min-max-normalised labels vs. normalised stride-1 logits (whole-tensor min/max)."""
  num_clips = saliency_labels.shape[1]
  conf = out_class[:, :num_clips, 0]
  if config.label_loss_includes_padding:
    norm = lambda x: (x - x.min()) / (x.max() - x.min())
    return jnp.mean(jnp.square(norm(saliency_labels) - norm(conf)))
  valid = video_mask > 0

  def masked_norm(x):
    lo = jnp.min(jnp.where(valid, x, jnp.inf))
    hi = jnp.max(jnp.where(valid, x, -jnp.inf))
    return (x - lo) / (hi - lo)

  sq = jnp.where(valid, jnp.square(masked_norm(saliency_labels) - masked_norm(conf)), 0.0)
  return sq.sum() / jnp.maximum(valid.sum(), 1)


# ----------------------------------------------------------------------------------------------------------------
# Total.


def flashmmr_losses(outputs: Mapping[str, Any], targets: Mapping[str, Array],
                    config: FlashMMRLossConfig) -> Tuple[Array, Dict[str, Array]]:
  """All FlashVTG loss terms and their weighted total.

  Args:
    outputs: `FlashMMR.__call__` output.
    targets: dict with `gt_windows_sec` [B, G, 2] (seconds; padding rows may be inf), `gt_valid` [B, G] bool
      (optional; default = finite rows), `fps` [B], `saliency_all_labels` [B, L], `saliency_pos_labels` [B, pairs],
      `saliency_neg_labels` [B, pairs].
    config: loss config.

  Returns:
    (loss_total, terms): terms holds `loss.<k>` unweighted, `loss_weighted.<k>`, `loss_saliency_part.*`,
    `loss_target.cls_tgt` / `reg_tgt` / `cls_weight`.
  """
  gt = targets["gt_windows_sec"]
  gt_valid = targets.get("gt_valid")
  if gt_valid is None:
    gt_valid = jnp.all(jnp.isfinite(gt), axis=-1)
  gt_valid = gt_valid.astype(bool)
  points = outputs["point"]
  cls_tgt, reg_tgt = point_targets(points, gt, gt_valid, targets["fps"], config.sample_radius,
                                   config.centre_sampling_inclusive_bounds)
  point_mask = outputs["pymid_msk"]
  labels = targets["saliency_all_labels"]
  unweighted = dict(
      loss_reg=regression_loss(outputs["out_coord"], reg_tgt, cls_tgt),
      loss_cls=classification_loss(outputs["out_class"], cls_tgt, point_mask, config),
      loss_sal=sampled_nce_loss(outputs["video_emb"], outputs["query_emb"], outputs["video_msk"], labels,
                                targets["saliency_pos_labels"][:, 0], config),
  )
  sal_total, parts = saliency_loss(outputs, labels, targets["saliency_pos_labels"], targets["saliency_neg_labels"],
                                   config)
  unweighted["loss_saliency"] = sal_total
  unweighted["loss_label"] = label_loss(outputs["out_class"], labels, outputs["video_msk"], config)
  weights = config.weights
  terms: Dict[str, Array] = {}
  total = jnp.float32(0.0)
  for name, value in unweighted.items():
    terms[f"loss.{name}"] = value
    terms[f"loss_weighted.{name}"] = value * weights[name]
    total = total + value * weights[name]
  for name, value in parts.items():
    terms[f"loss_saliency_part.{name}"] = value
  terms["loss_target.cls_tgt"] = cls_tgt
  terms["loss_target.reg_tgt"] = reg_tgt
  terms["loss_target.cls_weight"] = point_mask
  terms["loss_total"] = total
  return total, terms
