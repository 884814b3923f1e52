"""Greedy temporal non-maximum suppression over [start, end, score] rows: the one NMS of every method.

`suppress_scores` is the reference form (rows kept, suppressed scores zeroed); `nms_keep` drops them instead.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from amr_jax.ops import spans


def suppress_scores(rows: Sequence[Sequence[float]], iou_threshold: float, *, dtype=np.float32,
                    zero_length_iou_is_nan: bool = True) -> np.ndarray:
  """Greedy NMS as moment_detr's `temporal_nms`-style loop: for i = 0..N-1 the max-score row of rows[i:]
  (first index on ties) is swapped to i and every later row with IoU >= threshold gets score 0.  # [N, 3]

  With score-sorted input and positive scores this is classic greedy NMS: positive rows are visited in
  their input order (a swap only ever moves a zeroed row), so it also serves `nms_keep`.
  """
  bnd = np.array(rows, dtype).reshape(-1, 3)
  thd = dtype(iou_threshold)
  for i in range(bnd.shape[0]):
    max_idx = int(np.argmax(bnd[i:, -1])) + i
    if max_idx != i:
      bnd[[i, max_idx]] = bnd[[max_idx, i]]
    iou = spans.np_temporal_iou_one_to_many(bnd[i, :2], bnd[i + 1:, :2], zero_length_iou_is_nan)
    with np.errstate(invalid='ignore'):
      suppress = iou >= thd
    bnd[i + 1:, -1][suppress] = 0
  return bnd


def nms_keep(rows: Sequence[Sequence[float]], iou_threshold: float, max_keep: int) -> list:
  """Greedy NMS that drops suppressed rows: score-sorted (stable), at most `max_keep` rows kept."""
  ordered = sorted((list(r) for r in rows), key=lambda r: r[2], reverse=True)
  if not ordered:
    return []
  bnd = suppress_scores(ordered, iou_threshold, dtype=np.float64, zero_length_iou_is_nan=False)
  kept = [[float(v) for v in row] for row in bnd if row[2] > 0]
  return kept[:max_keep]
