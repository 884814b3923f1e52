"""QV-M² (FlashMMR) multi-moment metrics exactly as the QV-M2 `standalone_eval/eval.py` computes them.

Per bucket (full/long/middle/short): G-mAP and mAP by GT count (1, 2, >=3 as an unweighted mean over the
observed group sizes), R@k (k = 1, 2, 3) at IoU 0.30..0.95 with greedy one-to-one matching of the top-k windows,
mR@k (numpy round of the mean of the 14 already-rounded R@k values) and mIoU@k pooled over matched pairs.

Behaviour where the official script crashes or degenerates, defined here:
  * a query with an empty window list is skipped in mAP and is not eligible for R@k / mIoU@k (as officially).
  * a bucket with no query of exactly 1 (or 2) in-bucket GT windows: `1_tgt_mAP` (`2_tgt_mAP`) is `null`
    (officially a KeyError); `>=3_tgt_mAP` is 0.0 when no group >= 3 occurs (official).
  * a bucket without any query: the official placeholder `{"MR-mAP": D, "MR-R1": D}` where D has the 19 keys of
    `np.linspace(0.5, 0.95, 19)` and "average", all 0.0.
"""
from __future__ import annotations

import numpy as np

from amr_jax.metrics.common import LENGTH_BUCKETS, WindowTable, percent, round2
from amr_jax.ops.spans import true_iou
from amr_jax.metrics.qvh import average_precision_per_query, bucket_rows
from amr_jax.metrics.submission import Prepared

RECALL_THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
TOP_K = 3


def map_by_gt_count(pred: WindowTable, gt: WindowTable) -> dict:
  """{"1_tgt_mAP", "2_tgt_mAP", ">=3_tgt_mAP", "Generalized_mAP"} from per-query AP grouped by #GT."""
  with_pred = np.nonzero(pred.counts > 0)[0]
  result = {'1_tgt_mAP': None, '2_tgt_mAP': None, '>=3_tgt_mAP': 0.0, 'Generalized_mAP': 0.0}
  if not len(with_pred):
    return result
  ap = average_precision_per_query(pred.take_rows(with_pred), gt.take_rows(with_pred))
  gt_counts = gt.counts[with_pred]
  group_sizes, first_seen = np.unique(gt_counts, return_index=True)
  generalized = 0.0
  at_least_3, num_at_least_3 = 0.0, 0
  for size in group_sizes[np.argsort(first_seen)]:   # the official dict order: first appearance
    aps = ap[gt_counts == size]
    group_mean = aps.mean(axis=0).mean()
    generalized += group_mean * (len(aps) / len(with_pred))
    if size >= 3:
      num_at_least_3 += 1
      at_least_3 += group_mean
    elif size in (1, 2):
      result[f'{size}_tgt_mAP'] = percent(group_mean)
  at_least_3 /= num_at_least_3 if num_at_least_3 > 0 else 1
  result['>=3_tgt_mAP'] = percent(at_least_3)
  result['Generalized_mAP'] = percent(generalized)
  return result


def _greedy_matches(pred: WindowTable, gt: WindowTable, thresholds: np.ndarray):
  """Greedy matching of the first 3 windows (list order) to the unmatched GT of highest IoU (first on ties).

  Returns matched (Q, T, 3) bool and the IoU of each step's best available GT (Q, T, 3).
  """
  preds, pred_valid = pred.padded(TOP_K)
  gts, gt_valid = gt.padded()
  iou = true_iou(preds[:, :, None, 0], preds[:, :, None, 1], gts[:, None, :, 0], gts[:, None, :, 1])
  num_q, num_k = pred_valid.shape
  num_t = len(thresholds)
  available = np.broadcast_to(gt_valid[:, None, :], (num_q, num_t, gt_valid.shape[1])).copy()
  matched = np.zeros((num_q, num_t, TOP_K), dtype=bool)
  best_iou = np.zeros((num_q, num_t, TOP_K))
  q_index = np.arange(num_q)[:, None]
  t_index = np.arange(num_t)[None, :]
  for k in range(num_k):
    options = np.where(available, iou[:, None, k, :], -np.inf)
    best = options.argmax(axis=2)
    best_value = np.take_along_axis(options, best[..., None], axis=2)[..., 0]
    match = available.any(axis=2) & pred_valid[:, k, None] & (best_value >= thresholds[None, :])
    available[q_index, t_index, best] &= ~match
    matched[:, :, k] = match
    best_iou[:, :, k] = best_value
  return matched, best_iou


def recall_and_miou(pred: WindowTable, gt: WindowTable) -> dict:
  """MR-mIoU@k, MR-R{k} and MR-mR{k} of one bucket (official formulas and rounding)."""
  thresholds = np.array(RECALL_THRESHOLDS + (-1.0,))
  matched, best_iou = _greedy_matches(pred, gt, thresholds)
  num_pred, num_gt = np.minimum(pred.counts, TOP_K), gt.counts
  out = {}
  recalls = {}
  for k in range(1, TOP_K + 1):
    eligible = (num_gt >= k) & (num_pred >= k)
    total_gt = int(np.minimum(num_gt[eligible], k).sum())
    matches = matched[eligible][:, :len(RECALL_THRESHOLDS), :k].sum(axis=(0, 2))
    recalls[k] = {f'{t:.2f}': round2(int(m) / total_gt * 100) if total_gt > 0 else 0.0
                  for t, m in zip(RECALL_THRESHOLDS, matches)}
    ious = best_iou[eligible][:, -1, :k].reshape(-1)
    out[f'MR-mIoU@{k}'] = float(f'{np.mean(ious) * 100:.2f}') if len(ious) else 0.0
  return out, recalls


def qvm2_bucket(pred: WindowTable, gt: WindowTable) -> dict:
  """One bucket in the official key order."""
  miou, recalls = recall_and_miou(pred, gt)
  block = dict(miou)
  block['MR-mAP'] = map_by_gt_count(pred, gt)
  for k in range(1, TOP_K + 1):
    block[f'MR-R{k}'] = recalls[k]
  for k in range(1, TOP_K + 1):
    block[f'MR-mR{k}'] = float(np.round(np.mean(list(recalls[k].values())), 2))
  return block


def _empty_bucket() -> dict:
  placeholder = {repr(float(t)): 0.0 for t in np.linspace(0.5, 0.95, 19)}
  placeholder['average'] = 0.0
  return {'MR-mAP': placeholder, 'MR-R1': dict(placeholder)}


def evaluate(prepared: Prepared) -> dict:
  """The official QV-M2 `eval_submission` dict: "brief", then full/long/middle/short."""
  buckets = {}
  for name, min_len, max_len in LENGTH_BUCKETS:
    rows, gt = bucket_rows(prepared.gt_windows, min_len, max_len)
    buckets[name] = qvm2_bucket(prepared.pred_windows.take_rows(rows), gt) if len(rows) else _empty_bucket()
  buckets['full'] = qvm2_bucket(prepared.pred_windows, prepared.gt_windows) if len(prepared.qids) else \
      _empty_bucket()
  full = buckets['full']
  full_map = full['MR-mAP']
  brief = {
      'MR-full-mAP': full_map.get('Generalized_mAP'),
      'MR-full-mAP@1_tgt': full_map.get('1_tgt_mAP'),
      'MR-full-mAP@2_tgt': full_map.get('2_tgt_mAP'),
      'MR-full-mAP@3+tgt': full_map.get('>=3_tgt_mAP'),
  }
  for k in range(1, TOP_K + 1):
    brief[f'MR-full-mIoU@{k}'] = full.get(f'MR-mIoU@{k}')
    brief[f'MR-full-mR{k}'] = full.get(f'MR-mR{k}')
  return {'brief': dict(sorted(brief.items())), **dict(sorted(buckets.items()))}
