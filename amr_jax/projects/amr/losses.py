"""AMR training losses: the DETR set losses per decoder layer, saliency, CTC, VTC and the stage-2 dill/disc terms.

Every term follows the reference code (amr.md §3, fixture README §4), quirks included behind `quirks_config` switches.
All reductions run over the global batch; everything is jittable with fixed shapes.
"""
import jax
import jax.numpy as jnp

from amr_jax.projects.amr import matcher as matcher_lib
from amr_jax.ops import spans as span_utils

_FOREGROUND = 0
_NORMALIZE_EPS = 1e-12      # F.normalize
_COSINE_EPS = 1e-8          # F.cosine_similarity
_RANK_THRESHOLDS = tuple(range(1, 12))
_RANK_DIVISOR = 12.0
_RANK_PAD_FILL = -1e3
_RANK_EPS = 1e-6
_DISC_MEAN_EPS = 1e-6
_LAYER_KEYS = ('pred_logits', 'pred_spans', 'pred_masks', 'iou_scores')


def _normalize(x, axis=-1):
  """F.normalize: x / max(||x||, 1e-12)."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
  return x / jnp.maximum(norm, _NORMALIZE_EPS)


def _cosine_similarity(x, y, axis=-1):
  """F.cosine_similarity: x·y / sqrt(max(||x||²·||y||², eps²))."""
  dot = jnp.sum(x * y, axis=axis)
  norms_sq = jnp.sum(x * x, axis=axis) * jnp.sum(y * y, axis=axis)
  return dot / jnp.sqrt(jnp.maximum(norms_sq, _COSINE_EPS * _COSINE_EPS))


def _bce_with_logits(logits, targets):
  """Element-wise binary cross-entropy with logits (the stable PyTorch formula)."""
  return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _gather_rows(x, idx):
  """x [B, N, ...], idx [B, K] -> [B, K, ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _masked_mean(values, mask):
  """Sum of values·mask over everything divided by max(Σmask, 1); values [...], mask [...] (broadcastable)."""
  mask = jnp.broadcast_to(mask, values.shape).astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
  """torchvision's sigmoid focal loss, reduction 'none': `alpha_t·(1−p_t)^γ·BCE`; shapes [...] -> [...]."""
  prob = jax.nn.sigmoid(logits)
  ce = _bce_with_logits(logits, targets)
  p_t = prob * targets + (1.0 - prob) * (1.0 - targets)
  loss = ce * (1.0 - p_t) ** gamma
  alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
  return alpha_t * loss


def set_losses(layer_outputs, batch, match, *, loss_cfg, quirks):
  """DETR set losses of one decoder layer, given its matching.

  Args:
    layer_outputs: dict with `pred_logits [B,Q,2]`, `pred_spans [B,Q,2]`, `pred_masks [B,Q,Lv]`,
      `iou_scores [B,Q,1]` (logits).
    batch: dict with `span_labels_cxw [B,W,2]`, `mask_labels [B,W,Lv]`, `num_windows [B]`.
    match: `matcher.Match` with fields [B, W].
    loss_cfg: loss config (`focal_alpha`, `focal_gamma`).
    quirks: quirk switches (`iou_loss_all_queries`).

  Returns:
    dict of unweighted scalars: loss_span, loss_giou, loss_label, class_error, loss_mask_iou, loss_iou_scores.
  """
  pred_logits = layer_outputs['pred_logits']  # [B, Q, 2]
  pred_spans = layer_outputs['pred_spans']  # [B, Q, 2]
  pred_masks = layer_outputs['pred_masks']  # [B, Q, Lv]
  iou_logits = layer_outputs['iou_scores'][..., 0]  # [B, Q]
  span_labels_cxw = batch['span_labels_cxw']  # [B, W, 2]
  mask_labels = batch['mask_labels']  # [B, W, Lv]
  num_queries = pred_logits.shape[1]
  max_windows = span_labels_cxw.shape[1]
  src_idx, tgt_idx = match.src_idx, match.tgt_idx  # [B, W]
  valid = match.valid.astype(pred_spans.dtype)  # [B, W]
  num_matched = jnp.sum(valid)

  # Span L1 and GIoU over matched pairs.
  src_spans = _gather_rows(pred_spans, src_idx)  # [B, W, 2]
  tgt_spans = _gather_rows(span_labels_cxw, tgt_idx)  # [B, W, 2]
  # Unused slots get a harmless target so that no NaN can leak into the gradient through the masking.
  tgt_spans = jnp.where(match.valid[..., None], tgt_spans, jnp.asarray([0.5, 1.0], tgt_spans.dtype))
  loss_span = _masked_mean(jnp.abs(src_spans - tgt_spans), valid[..., None])
  giou = span_utils.generalized_temporal_iou_paired(
      span_utils.span_cxw_to_xx(src_spans), span_utils.span_cxw_to_xx(tgt_spans))  # [B, W]
  loss_giou = _masked_mean(1.0 - jnp.where(match.valid, giou, 0.0), valid)

  # Sigmoid focal loss on both logits; fg target for matched queries.
  is_matched = jnp.sum(jax.nn.one_hot(src_idx, num_queries, dtype=valid.dtype) * valid[..., None], axis=1)  # [B, Q]
  is_matched = jnp.minimum(is_matched, 1.0)
  target_onehot = jnp.stack([is_matched, 1.0 - is_matched], axis=-1)  # [B, Q, 2], index 0 = fg
  loss_label = jnp.mean(sigmoid_focal_loss(pred_logits, target_onehot, loss_cfg.focal_alpha, loss_cfg.focal_gamma))

  # class_error = 100 − top-1 accuracy (foreground) of the matched queries; a logging value.
  matched_logits = _gather_rows(pred_logits, src_idx)  # [B, W, 2]
  correct = jnp.sum((jnp.argmax(matched_logits, axis=-1) == _FOREGROUND).astype(valid.dtype) * valid)
  class_error = 100.0 - correct * (100.0 / jnp.maximum(num_matched, 1.0))
  class_error = jax.lax.stop_gradient(jnp.where(num_matched > 0, class_error, 100.0))

  # Soft mask IoU of matched pairs.
  src_masks = _gather_rows(pred_masks, src_idx)  # [B, W, Lv]
  tgt_masks = _gather_rows(mask_labels, tgt_idx)  # [B, W, Lv]
  tgt_masks = jnp.where(match.valid[..., None], tgt_masks, 1.0)
  mask_iou = span_utils.soft_mask_iou_paired(src_masks, tgt_masks)  # [B, W]
  loss_mask_iou = _masked_mean(1.0 - jnp.where(match.valid, mask_iou, 0.0), valid)

  # IoU-quality head: MSE(sigmoid(logit), detached IoU target).
  pred_iou = jax.nn.sigmoid(iou_logits)  # [B, Q]
  pred_xx = jax.lax.stop_gradient(span_utils.span_cxw_to_xx(pred_spans))  # [B, Q, 2]
  gt_xx = span_utils.span_cxw_to_xx(span_labels_cxw)  # [B, W, 2]
  if quirks.iou_loss_all_queries:
    # Reference: every query against the GT zero-padded to 10 windows; (0, 0) rows are zero-IoU candidates.
    window_valid = jnp.arange(max_windows)[None, :] < batch['num_windows'][:, None]  # [B, W]
    iou_all, _ = span_utils.temporal_iou_pairwise(pred_xx, gt_xx)  # [B, Q, W]
    iou_all = jnp.where(window_valid[:, None, :], iou_all, 0.0)
    iou_target = jax.lax.stop_gradient(jnp.max(iou_all, axis=-1))  # [B, Q]
    loss_iou_scores = jnp.mean((pred_iou - iou_target) ** 2)
  else:
    # Matched queries only, each against its matched GT window.
    iou_matched, _ = span_utils.temporal_iou_paired(_gather_rows(pred_xx, src_idx), _gather_rows(gt_xx, tgt_idx))
    iou_target = jax.lax.stop_gradient(jnp.where(match.valid, iou_matched, 0.0))  # [B, W]
    loss_iou_scores = _masked_mean((_gather_rows(pred_iou, src_idx) - iou_target) ** 2, valid)

  return {
      'loss_span': loss_span,
      'loss_giou': loss_giou,
      'loss_label': loss_label,
      'class_error': class_error,
      'loss_mask_iou': loss_mask_iou,
      'loss_iou_scores': loss_iou_scores,
  }


def saliency_loss_parts(saliency_scores, video_mask, pos_labels, neg_labels, all_labels, *, margin=0.2, tau=0.5):
  """Moment-DETR hinge and TR-DETR/CG-DETR rank-contrastive saliency losses.

  Args:
    saliency_scores: [B, Lv] raw clip scores (padding not masked).
    video_mask: [B, Lv] 1 = valid clip.
    pos_labels: [B, P] clip indices of positives (P pairs per sample).
    neg_labels: [B, P] clip indices of negatives.
    all_labels: [B, Lv] per-clip summed annotator score (0 = not relevant / padding).
    margin: hinge margin.
    tau: rank-contrastive temperature.

  Returns:
    (hinge, rank_contrastive) scalars; `loss_saliency` is their sum.
  """
  num_pairs = pos_labels.shape[1]
  batch_size = saliency_scores.shape[0]
  pos_scores = jnp.take_along_axis(saliency_scores, pos_labels.astype(jnp.int32), axis=1)  # [B, P]
  neg_scores = jnp.take_along_axis(saliency_scores, neg_labels.astype(jnp.int32), axis=1)  # [B, P]
  hinge = jnp.sum(jnp.maximum(margin + neg_scores - pos_scores, 0.0)) / (batch_size * num_pairs) * 2

  masked_scores = video_mask * saliency_scores + (1.0 - video_mask) * _RANK_PAD_FILL  # [B, Lv]
  # The reference's drop mask (label > 100) is never true, so the logits are masked_scores / tau.
  logits = masked_scores / tau
  logits = logits - jnp.max(logits, axis=1, keepdims=True)
  log_prob = logits - jnp.log(jnp.sum(jnp.exp(logits), axis=1, keepdims=True) + _RANK_EPS)  # [B, Lv]
  thresholds = jnp.asarray(_RANK_THRESHOLDS, all_labels.dtype)  # [R]
  pos_mask = (all_labels[None] >= thresholds[:, None, None]).astype(saliency_scores.dtype)  # [R, B, Lv]
  pos_count = jnp.sum(pos_mask, axis=2)  # [R, B]
  mean_log_prob_pos = jnp.sum(pos_mask * (log_prob * video_mask)[None], axis=2) / (pos_count + _RANK_EPS)  # [R, B]
  per_threshold = jnp.mean(-mean_log_prob_pos * (pos_count > 0).astype(saliency_scores.dtype), axis=1)  # [R]
  # A threshold with no positive anywhere in the batch is skipped.
  per_threshold = jnp.where(jnp.sum(pos_count, axis=1) > 0, per_threshold, 0.0)
  rank_contrastive = jnp.sum(per_threshold) / _RANK_DIVISOR
  return hinge, rank_contrastive


def ctc_loss(src_vid_ed, src_txt_ed, video_mask, txt_mask, pos_mask, *, temperature=0.07, mean_includes_padding=True):
  """Clip–text contrastive ("VCTC") loss: BCE of clip-vs-mean-token similarity against relevant clips.

  Args:
    src_vid_ed: [B, Lv, d] projected video.
    src_txt_ed: [B, Lt, d] projected text.
    video_mask: [B, Lv] 1 = valid clip.
    txt_mask: [B, Lt] 1 = valid token.
    pos_mask: [B, Lv] 1 = relevant clip (target).
    temperature: logit temperature.
    mean_includes_padding: reference quirk: average the BCE over all B·Lv positions (else valid clips only).

  Returns:
    scalar loss.
  """
  vid_norm = _normalize(src_vid_ed)  # [B, Lv, d]
  txt_norm = _normalize(src_txt_ed)  # [B, Lt, d]
  txt_global = (jnp.sum(txt_norm * txt_mask[..., None], axis=1)
                / jnp.sum(txt_mask, axis=1, keepdims=True))  # [B, d], not re-normalised
  logits = jnp.sum(vid_norm * txt_global[:, None, :], axis=-1) * video_mask / temperature  # [B, Lv]
  bce = _bce_with_logits(logits, pos_mask)
  if mean_includes_padding:
    return jnp.mean(bce)
  return _masked_mean(bce, video_mask)


def vtc_loss(src_txt_cls_ed, src_vid_cls_ed, *, temperature=0.07):
  """Symmetric InfoNCE over the (global) batch between sentence and video features; [B, d], [B, d] -> scalar."""
  txt = _normalize(src_txt_cls_ed)
  vid = _normalize(src_vid_cls_ed)
  logits = jnp.einsum('id,jd->ij', txt, vid, precision=jax.lax.Precision.HIGHEST) / temperature  # [B, B]
  diag = jnp.arange(logits.shape[0])
  loss_t2v = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[diag, diag])
  loss_v2t = -jnp.mean(jax.nn.log_softmax(logits, axis=0)[diag, diag])
  return 0.5 * (loss_t2v + loss_v2t)


def distillation_loss(student_hs, teacher_hs):
  """`1 − mean cos(student, teacher)` over layers × batch × the teacher's queries.

  Args:
    student_hs: [L, B, Nq_student, d] decoder states; the first Nq_teacher queries are compared.
    teacher_hs: [L, B, Nq_teacher, d] frozen teacher states (no gradient).

  Returns:
    scalar loss.
  """
  num_teacher_queries = teacher_hs.shape[2]
  cos = _cosine_similarity(student_hs[:, :, :num_teacher_queries], jax.lax.stop_gradient(teacher_hs))
  return 1.0 - jnp.mean(cos)


def discriminative_loss(src_vid_ed, anchor, pos_mask, neg_mask, *, temperature=0.07):
  """`mean_b softplus((n − p)/T)` with p / n the mean clip–anchor cosine over relevant / wrong-span clips.

  Args:
    src_vid_ed: [B, Lv, d] projected video.
    anchor: [B, d] anchor (reference: the mean video feature `src_vid_cls_ed`).
    pos_mask: [B, Lv] relevant clips.
    neg_mask: [B, Lv] clips of mined wrong spans (all zero -> n = 0).
    temperature: temperature.

  Returns:
    (loss, sim [B, Lv], pos_sim [B], neg_sim [B]).
  """
  sim = jnp.sum(_normalize(src_vid_ed) * _normalize(anchor)[:, None, :], axis=-1)  # [B, Lv]
  pos_sim = jnp.sum(sim * pos_mask, axis=1) / (jnp.sum(pos_mask, axis=1) + _DISC_MEAN_EPS)  # [B]
  neg_sim = jnp.sum(sim * neg_mask, axis=1) / (jnp.sum(neg_mask, axis=1) + _DISC_MEAN_EPS)  # [B]
  loss = jnp.mean(jax.nn.softplus((neg_sim - pos_sim) / temperature))
  return loss, sim, pos_sim, neg_sim


def layer_outputs_list(outputs):
  """Per-decoder-layer output dicts l = 0..L-1: the aux layers, then the final (un-prefixed) layer."""
  final = {k: outputs[k] for k in _LAYER_KEYS}
  return [*outputs.get('aux_outputs', []), final]


def match_all_layers(outputs, batch, matcher_cfg):
  """Match every decoder layer separately; returns an index array [L, B, W, 2] (-1 = unused slot)."""
  return jnp.stack([matcher_lib.match_to_indices(matcher_lib.match_layer(layer, batch, matcher_cfg))
                    for layer in layer_outputs_list(outputs)])


def amr_loss(outputs, batch, *, loss_cfg, matcher_cfg, quirks, teacher_hs=None, indices=None):
  """The AMR training loss (stage 1; stage 2 when `teacher_hs` is given).

  Args:
    outputs: model output dict (`pred_logits`, `pred_spans`, `iou_scores`, `pred_masks`, `aux_outputs` [list of
      dicts with the same 4 keys for layers 0..L-2], `saliency_scores`, `video_mask`, `hs`, `src_txt_ed`,
      `src_vid_ed`, `src_vid_cls_ed`, `src_txt_cls_ed`).
    batch: dict with `src_vid_mask`, `src_txt_mask`, `span_labels_cxw`, `num_windows`, `mask_labels`,
      `saliency_pos_labels`, `saliency_neg_labels`, `saliency_all_labels`, `src_pos_mask` and, in stage 2,
      `src_neg_mask`.
    loss_cfg: `configs.amr_common.loss_config()`.
    matcher_cfg: `configs.amr_common.matcher_config()`.
    quirks: `configs.amr_common.quirks_config()`.
    teacher_hs: [L, B, Nq_teacher, d] frozen teacher decoder states; enables `loss_dill` and `loss_disc`.
    indices: optional [L, B, W, 2] int matching (query, window) per layer l = 0..L-1, -1 for unused slots;
      overrides the matcher (e.g. recorded reference indices).

  Returns:
    (total, aux): `total` is the scalar loss; `aux` = {'unweighted': {key: scalar}, 'weighted': {key: scalar},
    'indices': [L, B, W, 2] int32, 'parts': {'loss_saliency_margin', 'loss_saliency_rankcon'}}. Keys use the
    reference names (`loss_span`, ..., aux layer l with suffix `_l`); `class_error*` is only in 'unweighted'.
    `total` = Σ aux['weighted'].
  """
  layers = layer_outputs_list(outputs)
  num_layers = len(layers)
  if indices is None:
    indices = match_all_layers(outputs, batch, matcher_cfg)
  indices = jax.lax.stop_gradient(jnp.asarray(indices).astype(jnp.int32))  # [L, B, W, 2]
  if indices.shape[0] != num_layers:
    raise ValueError(f'indices has {indices.shape[0]} layers, outputs have {num_layers}')

  unweighted, weights = {}, {}
  set_weights = {
      'loss_span': loss_cfg.span,
      'loss_giou': loss_cfg.giou,
      'loss_label': loss_cfg.label,
      'loss_mask_iou': loss_cfg.mask_iou,
      'loss_iou_scores': loss_cfg.iou_scores,
  }
  for layer_idx, layer in enumerate(layers):
    is_final = layer_idx == num_layers - 1
    suffix = '' if is_final else f'_{layer_idx}'
    terms = set_losses(layer, batch, matcher_lib.indices_to_match(indices[layer_idx]), loss_cfg=loss_cfg,
                       quirks=quirks)
    for key, value in terms.items():
      unweighted[key + suffix] = value
      if key in set_weights:
        weight = set_weights[key]
        if is_final and key == 'loss_mask_iou' and quirks.final_mask_loss_weight_zero:
          weight = 0.0
        weights[key + suffix] = weight

  video_mask = batch['src_vid_mask']
  hinge, rank_contrastive = saliency_loss_parts(
      outputs['saliency_scores'], video_mask, batch['saliency_pos_labels'], batch['saliency_neg_labels'],
      batch['saliency_all_labels'], margin=loss_cfg.saliency_margin, tau=loss_cfg.rank_tau)
  unweighted['loss_saliency'] = hinge + rank_contrastive
  weights['loss_saliency'] = loss_cfg.saliency

  unweighted['loss_ctc'] = ctc_loss(
      outputs['src_vid_ed'], outputs['src_txt_ed'], video_mask, batch['src_txt_mask'], batch['src_pos_mask'],
      temperature=loss_cfg.ctc_temperature, mean_includes_padding=quirks.ctc_mean_includes_padding)
  weights['loss_ctc'] = loss_cfg.ctc

  if quirks.vtc_mean_includes_padding:
    vid_cls = outputs['src_vid_cls_ed']
  else:
    vid_cls = (jnp.sum(outputs['src_vid_ed'] * video_mask[..., None], axis=1)
               / jnp.maximum(jnp.sum(video_mask, axis=1, keepdims=True), 1.0))
  unweighted['loss_vtc'] = vtc_loss(outputs['src_txt_cls_ed'], vid_cls, temperature=loss_cfg.vtc_temperature)
  weights['loss_vtc'] = loss_cfg.vtc

  if teacher_hs is not None:
    unweighted['loss_dill'] = distillation_loss(outputs['hs'], teacher_hs)
    weights['loss_dill'] = loss_cfg.dill
    anchor = outputs['src_vid_cls_ed'] if quirks.disc_anchor_video_mean else outputs['src_txt_cls_ed']
    unweighted['loss_disc'], _, _, _ = discriminative_loss(
        outputs['src_vid_ed'], anchor, batch['src_pos_mask'], batch['src_neg_mask'],
        temperature=loss_cfg.disc_temperature)
    weights['loss_disc'] = loss_cfg.disc

  weighted = {key: unweighted[key] * weight for key, weight in weights.items()}
  total = sum(weighted.values())
  aux = {
      'unweighted': unweighted,
      'weighted': weighted,
      'indices': indices,
      'parts': {'loss_saliency_margin': hinge, 'loss_saliency_rankcon': rank_contrastive},
  }
  return total, aux
