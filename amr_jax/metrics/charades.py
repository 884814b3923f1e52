"""Charades-STA (and any single-moment dataset) metrics: standard R1/R5@{0.3,0.5,0.7} and mIoU, plus moment_detr MR.

Output: {"standard": {...}, "moment_detr": {...}}. The moment_detr block is `qvh.evaluate` without highlights;
an empty length bucket (Charades has no GT window longer than 30 s) gives `null` for the bucket and its brief mAP.

Standard block (tests/fixtures/eval/README.md): top-k = the first k windows in list order (fewer if the list is
shorter); IoU = true IoU in float64, predictions not clipped, zero-length windows score 0; R{k}@t = 100 * mean
over queries of [max IoU among the top-k >= t]; mIoU = 100 * mean over queries of the first window's IoU.
A query with several GT windows uses, per predicted window, its highest IoU over them. An empty window list
is a miss with IoU 0 (every query counts).
"""
from __future__ import annotations

import numpy as np

from amr_jax.metrics import qvh
from amr_jax.ops.spans import true_iou
from amr_jax.metrics.submission import Prepared

STANDARD_THRESHOLDS = (0.3, 0.5, 0.7)
STANDARD_TOP_K = (1, 5)


def standard_metrics(prepared: Prepared) -> dict:
  """{"R1@0.3", .., "R5@0.7", "mIoU"} in percent, rounded with float(f"{v:.2f}"); all None without queries."""
  keys = [f'R{k}@{t}' for k in STANDARD_TOP_K for t in STANDARD_THRESHOLDS] + ['mIoU']
  if not prepared.qids:
    return dict.fromkeys(keys)
  max_k = max(STANDARD_TOP_K)
  preds, pred_valid = prepared.pred_windows.padded(max_k)
  gts, gt_valid = prepared.gt_windows.padded()
  iou = true_iou(preds[:, :, None, 0], preds[:, :, None, 1], gts[:, None, :, 0], gts[:, None, :, 1])
  iou = np.where(gt_valid[:, None, :], iou, -np.inf).max(axis=2)            # (Q, K): best GT per window
  iou = np.where(pred_valid, iou, 0.0)
  result = {}
  for k in STANDARD_TOP_K:
    best_in_top_k = iou[:, :k].max(axis=1)
    for t in STANDARD_THRESHOLDS:
      result[f'R{k}@{t}'] = float(f'{np.mean(best_in_top_k >= t) * 100:.2f}')
  result['mIoU'] = float(f'{np.mean(iou[:, 0]) * 100:.2f}')
  return result


def evaluate(prepared: Prepared) -> dict:
  return {'standard': standard_metrics(prepared), 'moment_detr': qvh.evaluate(prepared, highlight=False)}
