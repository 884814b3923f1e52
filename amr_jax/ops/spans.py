"""Temporal span geometry: (cx, w) <-> (start, end), temporal IoU / GIoU and the soft mask IoU.

Pairwise functions compare every row of one set with every row of another ([..., N, M]); paired functions compare
row k with row k ([..., N]). Spans are float arrays whose last axis has size 2. The jnp functions are jittable;
the `np_` forms at the end serve host-side post-processing, NMS and mining.
"""
import jax.numpy as jnp
import numpy as np


def span_cxw_to_xx(span_cxw):
  """(center, width) -> (start, end); shape [..., 2] -> [..., 2]."""
  center, width = span_cxw[..., 0], span_cxw[..., 1]
  return jnp.stack([center - 0.5 * width, center + 0.5 * width], axis=-1)


def span_xx_to_cxw(span_xx):
  """(start, end) -> (center, width); shape [..., 2] -> [..., 2]."""
  start, end = span_xx[..., 0], span_xx[..., 1]
  return jnp.stack([0.5 * (start + end), end - start], axis=-1)


def temporal_iou_pairwise(spans1_xx, spans2_xx, empty_union_iou=None):
  """IoU and union of every pair of (start, end) spans.

  Args:
    spans1_xx: [..., N, 2] spans (start, end).
    spans2_xx: [..., M, 2] spans (start, end).
    empty_union_iou: None = `inter / union` with no epsilon (as the TR-DETR reference); a number = that value
      where the union is empty, with a division that stays finite in the gradient too.

  Returns:
    (iou, union), both [..., N, M].
  """
  start1, end1 = spans1_xx[..., :, None, 0], spans1_xx[..., :, None, 1]  # [..., N, 1]
  start2, end2 = spans2_xx[..., None, :, 0], spans2_xx[..., None, :, 1]  # [..., 1, M]
  area1 = end1 - start1
  area2 = end2 - start2
  inter = jnp.maximum(jnp.minimum(end1, end2) - jnp.maximum(start1, start2), 0.0)  # [..., N, M]
  union = area1 + area2 - inter
  if empty_union_iou is None:
    return inter / union, union
  nonempty = union > 0
  return jnp.where(nonempty, inter / jnp.where(nonempty, union, 1.0), empty_union_iou), union


def generalized_temporal_iou_pairwise(spans1_xx, spans2_xx):
  """Generalised IoU (Rezatofighi et al. 2019) of every pair of spans; [..., N, 2], [..., M, 2] -> [..., N, M]."""
  iou, union = temporal_iou_pairwise(spans1_xx, spans2_xx)
  left = jnp.minimum(spans1_xx[..., :, None, 0], spans2_xx[..., None, :, 0])
  right = jnp.maximum(spans1_xx[..., :, None, 1], spans2_xx[..., None, :, 1])
  enclosing = jnp.maximum(right - left, 0.0)  # [..., N, M]
  return iou - (enclosing - union) / enclosing


def temporal_iou_paired(spans1_xx, spans2_xx):
  """IoU and union of row-aligned (start, end) spans; [..., 2], [..., 2] -> ([...], [...])."""
  start1, end1 = spans1_xx[..., 0], spans1_xx[..., 1]
  start2, end2 = spans2_xx[..., 0], spans2_xx[..., 1]
  inter = jnp.maximum(jnp.minimum(end1, end2) - jnp.maximum(start1, start2), 0.0)
  union = (end1 - start1) + (end2 - start2) - inter
  return inter / union, union


def generalized_temporal_iou_paired(spans1_xx, spans2_xx):
  """Generalised IoU of row-aligned (start, end) spans; [..., 2], [..., 2] -> [...]."""
  iou, union = temporal_iou_paired(spans1_xx, spans2_xx)
  left = jnp.minimum(spans1_xx[..., 0], spans2_xx[..., 0])
  right = jnp.maximum(spans1_xx[..., 1], spans2_xx[..., 1])
  enclosing = jnp.maximum(right - left, 0.0)
  return iou - (enclosing - union) / enclosing


def soft_mask_iou_pairwise(pred_masks, gt_masks):
  """Soft IoU `Σpg / (Σp + Σg − Σpg)` over the clip axis for every (prediction, GT) pair.

  Args:
    pred_masks: [..., N, L] mask probabilities.
    gt_masks: [..., M, L] 0/1 masks.

  Returns:
    [..., N, M] soft IoU (no epsilon, as the reference; sums run over all L padded positions).
  """
  # A broadcast product instead of a matmul, so that no TF32 / reduced-precision dot is ever used.
  inter = jnp.sum(pred_masks[..., :, None, :] * gt_masks[..., None, :, :], axis=-1)  # [..., N, M]
  pred_sum = jnp.sum(pred_masks, axis=-1)[..., :, None]  # [..., N, 1]
  gt_sum = jnp.sum(gt_masks, axis=-1)[..., None, :]  # [..., 1, M]
  return inter / (pred_sum + gt_sum - inter)


def soft_mask_iou_paired(pred_masks, gt_masks):
  """Soft IoU of row-aligned masks; [..., L], [..., L] -> [...]."""
  inter = jnp.sum(pred_masks * gt_masks, axis=-1)
  return inter / (jnp.sum(pred_masks, axis=-1) + jnp.sum(gt_masks, axis=-1) - inter)


# ----------------------------------------------------------------------------------------------------
# numpy forms (post-processing, NMS, mining, diagnostics)
# ----------------------------------------------------------------------------------------------------
def np_temporal_iou_one_to_many(window: np.ndarray, others: np.ndarray,
                                zero_length_iou_is_nan: bool = True) -> np.ndarray:
  """IoU of one window [2] vs many [N, 2], in the inputs' dtype (nncore `temporal_iou`).  # [N]

  zero_length_iou_is_nan: keep 0/0 = nan (reference) or map identical zero-length windows to 1, others to 0.
  """
  len_a = window[1] - window[0]
  len_b = others[:, 1] - others[:, 0]
  inter = np.maximum(np.minimum(window[1], others[:, 1]) - np.maximum(window[0], others[:, 0]),
                     np.zeros((), others.dtype))
  union = len_a + len_b - inter
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = inter / union
  if not zero_length_iou_is_nan:
    same = (others[:, 0] == window[0]) & (others[:, 1] == window[1])
    iou = np.where((union == 0) & same, np.ones((), iou.dtype), np.where(union == 0, 0, iou)).astype(iou.dtype)
  return iou


def np_temporal_iou_pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Pairwise IoU of [N, 2] and [M, 2] windows; 0 where the union is empty.  # [N, M]"""
  inter = np.clip(np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
  union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def true_iou(pred_st, pred_ed, gt_st, gt_ed) -> np.ndarray:
  """Broadcast true IoU `inter / ((p_ed - p_st) + (g_ed - g_st) - inter)` in float64; 0 where the union is 0."""
  inter = np.maximum(np.minimum(pred_ed, gt_ed) - np.maximum(pred_st, gt_st), 0.0)
  union = (pred_ed - pred_st) + (gt_ed - gt_st) - inter
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = inter / union
  iou[np.isnan(iou)] = 0.0
  return iou


def hull_iou(pred_st, pred_ed, gt_st, gt_ed) -> np.ndarray:
  """moment_detr's R1 IoU `inter / (max(ed) - min(st))` in float64; 0 where that hull length is 0."""
  inter = np.maximum(0, np.minimum(pred_ed, gt_ed) - np.maximum(pred_st, gt_st))
  hull = np.maximum(pred_ed, gt_ed) - np.minimum(pred_st, gt_st)
  return np.divide(inter, hull, out=np.zeros_like(inter), where=hull != 0)
