"""QVHighlights metrics exactly as moment_detr's `standalone_eval/eval.py` computes them, vectorised in numpy.

MR: R1@{0.5..0.95} and mAP@{0.5..0.95} (+ average) for the buckets full/short/middle/long; HL: mAP and HIT@1
for the minimum saliency scores 2 (Fair), 3 (Good), 4 (VeryGood). Output keys, nesting and order are the
official `eval_submission(..., match_number=True)` ones, and each number is bit-for-bit the official float64
result (same IoU expressions, same numpy reductions in the same order).

Where the official script crashes, this module defines the value instead:
  * an empty `pred_relevant_windows` list: R1 counts the query as a miss (IoU 0); AP skips the query (it never
    enters the mean, as in the official AP code).
  * an empty `pred_saliency_scores` list: HIT@1 is 0 for that query; its HL-AP uses the all-zero padded scores.
  * a video shorter than one 2 s clip (no clip grid): HIT@1 and HL-AP are 0 for that query.
  * highlight metrics are computed when the submission has `pred_saliency_scores` and the GT has
    `saliency_scores` (the official script looks at the first submission row only and crashes without GT
    labels); without GT labels on any row the HL keys are left out, on some rows only it is a validation problem.
  * a length bucket without any query (e.g. "long" on Charades-STA): the bucket and its brief mAP are `null`;
    a bucket whose queries all have empty window lists gets `"MR-mAP": null` (R1 is still reported).
GT windows of zero length give IoU 0 (the official code divides 0 by 0 there).
"""
from __future__ import annotations

import threading

import numpy as np

from amr_jax.metrics.common import (LENGTH_BUCKETS, MAX_PRED_WINDOWS_AP, MR_AP_THRESHOLDS, WindowTable,
                                    accumulate_rows, exact_column_sums, percent)
from amr_jax.metrics.submission import Prepared
from amr_jax.ops.spans import hull_iou, true_iou

HL_MIN_SCORES = (('Fair', 2), ('Good', 3), ('VeryGood', 4))
_NO_GT = -np.inf  # IoU of a padding GT slot: below every threshold, last in descending order
_GT_COUNT_GROUPS = (1, 4)  # AP is computed per group of queries with <= 1, <= 4, > 4 GT windows


# ------------------------------------------------------------------------------------------------------------
# Moment retrieval
# ------------------------------------------------------------------------------------------------------------
def _gt_visit_order(iou: np.ndarray, gt_valid: np.ndarray, min_threshold: float) -> np.ndarray:
  """(Q, P, G) GT indices in descending IoU, as `tiou_arr.argsort()[::-1]` visits them.

  Rows where two GTs tie exactly at an IoU >= the lowest threshold (the only case where the order matters) are
  re-sorted with that very numpy call on the unpadded row, so the tie order is numpy's own.
  """
  order = np.argsort(-iou, axis=2, kind='stable')
  ranked = np.take_along_axis(iou, order, axis=2)
  tied = (ranked[..., 1:] == ranked[..., :-1]) & (ranked[..., 1:] >= min_threshold)
  num_gt = gt_valid.sum(axis=1)
  for q, p in zip(*np.nonzero(tied.any(axis=2))):
    n = num_gt[q]
    order[q, p, :n] = iou[q, p, :n].argsort()[::-1]
  return order


def _interpolated_ap(tp: np.ndarray, num_gt: np.ndarray) -> np.ndarray:
  """VOC-interpolated AP per column of (P, N) true positives (valid predictions first); returns (N,).

  Official: precision / recall padded to [0, p, 0] / [0, r, 1], precision made non-increasing from the right,
  AP = sum over recall changes of delta-recall * precision, summed with numpy's order. Padding predictions
  (after the valid ones) are never true positives, so their recall repeats the last one (never a change) and
  their precision is below the last valid one (never raises the running max): they need no masking. The
  precision tp / (tp + fp) is tp / rank exactly, as tp + fp is the integer rank.
  """
  num_p = tp.shape[0]
  tp_cum = accumulate_rows(np.add, tp, np.float64)
  recall = tp_cum / num_gt
  precision = tp_cum / np.arange(1.0, num_p + 1.0)[:, None]
  interpolated = accumulate_rows(np.maximum, precision[::-1])[::-1]
  recall_step = np.empty((num_p + 1, tp.shape[1]))
  recall_step[0] = recall[0]
  np.subtract(recall[1:], recall[:-1], out=recall_step[1:num_p])
  np.subtract(1.0, recall[-1], out=recall_step[num_p])
  changed = recall_step != 0
  terms = recall_step
  terms[:num_p] *= interpolated
  terms[num_p] = 0.0                                        # the padded last precision is 0
  return exact_column_sums(terms, changed)


def _average_precision_block(pred: WindowTable, gt: WindowTable, thresholds: np.ndarray) -> np.ndarray:
  """(Q, T) AP for queries padded to one GT width (see `average_precision_per_query`)."""
  preds, pred_valid = pred.padded(MAX_PRED_WINDOWS_AP)
  gts, gt_valid = gt.padded()
  score_key = np.where(pred_valid, -preds[..., 2], np.inf)
  by_score = np.argsort(score_key, axis=1, kind='stable')
  preds = np.take_along_axis(preds, by_score[..., None], axis=1)
  pred_valid = np.take_along_axis(pred_valid, by_score, axis=1)
  iou = true_iou(preds[:, :, None, 0], preds[:, :, None, 1], gts[:, None, :, 0], gts[:, None, :, 1])
  iou = np.where(gt_valid[:, None, :], iou, _NO_GT)
  num_q, num_p, num_g = iou.shape
  num_t = len(thresholds)
  if num_g > 1:
    order = _gt_visit_order(iou, gt_valid, float(thresholds.min()))
    visit_rank = np.empty_like(order)
    np.put_along_axis(visit_rank, order, np.arange(num_g)[None, None, :], axis=2)
  if num_g == 1:  # one GT: the first prediction (in score order) that reaches the threshold takes it
    reaches = (iou[:, :, 0].T[:, :, None] >= thresholds) & pred_valid.T[:, :, None]     # (P, Q, T)
    tp = reaches & (accumulate_rows(np.add, reaches, np.int16) == 1)
  else:
    reaches = iou[:, :, None, :] >= thresholds[None, None, :, None]     # (Q, P, T, G)
    locked = np.zeros((num_q, num_t, num_g), dtype=bool)
    tp = np.zeros((num_p, num_q, num_t), dtype=bool)
    q_index = np.arange(num_q)[:, None]
    t_index = np.arange(num_t)[None, :]
    for p in range(num_p):
      candidate = reaches[:, p] & ~locked
      hit = candidate.any(axis=2) & pred_valid[:, p, None]
      chosen = np.where(candidate, visit_rank[:, p, None, :], num_g).argmin(axis=2)
      locked[q_index, t_index, chosen] |= hit
      tp[p] = hit
  num_gt = np.repeat(gt_valid.sum(axis=1).astype(np.float64), num_t)
  ap = _interpolated_ap(tp.reshape(num_p, num_q * num_t), num_gt)
  return ap.reshape(num_q, num_t)


def average_precision_per_query(pred: WindowTable, gt: WindowTable,
                                thresholds=MR_AP_THRESHOLDS) -> np.ndarray:
  """(Q, T) AP of every query (each must have >= 1 predicted and >= 1 GT window) at every IoU threshold.

  The first 10 windows in list order, stable-sorted by descending score; at each threshold every prediction takes
  the first unlocked GT (in descending IoU) whose IoU is >= the threshold; VOC-interpolated AP. Queries are
  processed in a few groups by GT count (1, 2-4, 5+) to keep the padded arrays small.
  """
  thresholds = np.asarray(thresholds, dtype=np.float64)
  gt_counts = gt.counts
  width_class = np.searchsorted(np.array(_GT_COUNT_GROUPS), gt_counts)
  ap = np.empty((len(gt_counts), len(thresholds)))
  for group in range(len(_GT_COUNT_GROUPS) + 1):
    rows = np.nonzero(width_class == group)[0]
    if len(rows):
      ap[rows] = _average_precision_block(pred.take_rows(rows), gt.take_rows(rows), thresholds)
  return ap


def map_block(ap: np.ndarray, thresholds=MR_AP_THRESHOLDS) -> dict:
  """{"0.5": .., ..., "0.95": .., "average": ..} from (Q, T) per-query APs (official float64 reductions)."""
  ap_per_threshold = ap.mean(0)
  block = {str(t): v for t, v in zip(thresholds, ap_per_threshold)}
  block['average'] = np.mean(ap_per_threshold)
  return {k: percent(v) for k, v in block.items()}


def recall_at_one_iou(pred: WindowTable, gt: WindowTable) -> np.ndarray:
  """(Q,) moment_detr R1 IoU: the first window in list order vs the GT of highest true IoU (first on ties),
  measured with the hull IoU; -1 for a query with an empty window list (a miss at every threshold)."""
  has_pred = pred.counts > 0
  first = pred.values[np.minimum(pred.offsets[:-1], max(len(pred.values) - 1, 0))] if len(pred.values) else \
      np.zeros((len(pred), 3))
  gts, gt_valid = gt.padded()
  iou = true_iou(first[:, None, 0], first[:, None, 1], gts[..., 0], gts[..., 1])
  best = np.argmax(np.where(gt_valid, iou, _NO_GT), axis=1)
  best_gt = gts[np.arange(len(gts)), best]
  iou_hull = hull_iou(first[:, 0], first[:, 1], best_gt[:, 0], best_gt[:, 1])
  return np.where(has_pred, iou_hull, -1.0)


def recall_at_one_block(iou_hull: np.ndarray, thresholds=MR_AP_THRESHOLDS) -> dict:
  """{"0.5": .., ..., "0.95": ..}: float(f"{np.mean(iou >= t) * 100:.2f}") per threshold."""
  return {str(t): float(f'{np.mean(iou_hull >= t) * 100:.2f}') for t in thresholds}


def bucket_rows(gt: WindowTable, min_len: float, max_len: float) -> tuple[np.ndarray, WindowTable]:
  """Rows with >= 1 GT window of length in (min_len, max_len], and the GT table of those windows only."""
  lengths = gt.values[:, 1] - gt.values[:, 0]
  in_range = gt.keep((min_len < lengths) & (lengths <= max_len))
  rows = np.nonzero(in_range.counts > 0)[0]
  return rows, in_range.take_rows(rows)


def moment_retrieval(prepared: Prepared) -> dict:
  """{"short": .., "middle": .., "long": .., "full": ..}, each {"MR-mAP": .. or None, "MR-R1": ..}; an empty
  bucket is None. All buckets are stacked into one batch of rows for the AP and R1 computations, then each
  bucket's slice is reduced exactly as the official per-bucket call does."""
  names, preds, gts = [], [], []
  for name, min_len, max_len in LENGTH_BUCKETS + (('full', None, None),):
    if min_len is None:
      rows, gt = np.arange(len(prepared.qids)), prepared.gt_windows
    else:
      rows, gt = bucket_rows(prepared.gt_windows, min_len, max_len)
    names.append(name)
    preds.append(prepared.pred_windows.take_rows(rows))
    gts.append(gt)
  sizes = np.array([len(g) for g in gts])
  bucket_of_row = np.repeat(np.arange(len(names)), sizes)
  pred, gt = WindowTable.concat(preds), WindowTable.concat(gts)
  hull = recall_at_one_iou(pred, gt)
  with_pred = np.nonzero(pred.counts > 0)[0]
  ap = average_precision_per_query(pred.take_rows(with_pred), gt.take_rows(with_pred))
  ap_bucket = bucket_of_row[with_pred]
  buckets = {}
  for index, name in enumerate(names):
    if sizes[index] == 0:
      buckets[name] = None
      continue
    bucket_ap = ap[ap_bucket == index]
    buckets[name] = {'MR-mAP': map_block(bucket_ap) if len(bucket_ap) else None,
                     'MR-R1': recall_at_one_block(hull[bucket_of_row == index])}
  return buckets


def moment_retrieval_brief(buckets: dict) -> dict:
  """The 8 MR brief keys in sorted order (None where the bucket or its mAP is missing)."""

  def get(bucket, block, key):
    values = (buckets.get(bucket) or {}).get(block)
    return None if values is None else values[key]

  brief = {
      'MR-full-mAP': get('full', 'MR-mAP', 'average'),
      'MR-full-mAP@0.5': get('full', 'MR-mAP', '0.5'),
      'MR-full-mAP@0.75': get('full', 'MR-mAP', '0.75'),
      'MR-short-mAP': get('short', 'MR-mAP', 'average'),
      'MR-middle-mAP': get('middle', 'MR-mAP', 'average'),
      'MR-long-mAP': get('long', 'MR-mAP', 'average'),
      'MR-full-R1@0.5': get('full', 'MR-R1', '0.5'),
      'MR-full-R1@0.7': get('full', 'MR-R1', '0.7'),
  }
  return dict(sorted(brief.items()))


# ------------------------------------------------------------------------------------------------------------
# Highlight detection
# ------------------------------------------------------------------------------------------------------------
def _gt_score_grid(prepared: Prepared) -> np.ndarray:
  """(Q, max_clips, 3) annotator scores on the 2 s clip grid; clips not listed are 0."""
  num_clips = prepared.gt_num_clips
  grid = np.zeros((len(num_clips), max(int(num_clips.max(initial=0)), 1), 3))
  rows = np.repeat(np.arange(len(num_clips)), prepared.gt_clip_ids.counts)
  grid[rows, prepared.gt_clip_ids.values[:, 0].astype(np.int64)] = prepared.gt_saliency.values
  return grid


def _top_clip_scores(raw_scores: WindowTable, grid: np.ndarray, num_clips: np.ndarray) -> tuple:
  """GT scores (Q, 3) of the clip at the argmax of each raw score list (first on ties), and whether it counts.

  It does not count (hit 0) when the argmax is past the clip grid or the list is empty.
  """
  scores, valid = raw_scores.padded(fill=-np.inf)
  top = np.argmax(scores[..., 0], axis=1)
  usable = valid.any(axis=1) & (top < num_clips)
  top_scores = grid[np.arange(len(top)), np.minimum(top, grid.shape[1] - 1)]
  return top_scores, usable


def _hit_at_one(top_scores: np.ndarray, usable: np.ndarray, min_score: int) -> float:
  hit_scores = np.where(usable[:, None], top_scores >= min_score, False).astype(np.float64)
  return float(f'{100 * np.mean(np.max(hit_scores, 1)):.2f}')


class RankedClips:
  """Per query, the clips in descending predicted-score order and sklearn's threshold runs (equal scores).

  Arrays are rank-major, (C, Q * 3) with column q * 3 + annotator, so that every cumulative op runs along axis 0.

  Attributes:
    labels_by_rank: (C, Q * 3) GT annotator scores in ranked order (-1 past the video's clips); int8 when they
      are small integers (as in QVHighlights), else float64.
    run_end: (C, Q * 3) True at the last ranked clip of each run of equal scores.
    tied: (ranks, queries, run starts) of ranked clips that are not the first of their run.
    num_clips: (Q,).
  """

  def __init__(self, grid: np.ndarray, scores: np.ndarray, num_clips: np.ndarray):
    num_q, width, _ = grid.shape
    in_video = np.arange(width)[:, None] < num_clips[None, :]                       # (C, Q)
    order = np.argsort(np.where(in_video.T, -scores, np.inf), axis=1, kind='stable')
    ranked = np.take_along_axis(scores, order, axis=1).T                            # (C, Q)
    small_ints = grid.size == 0 or (np.abs(grid).max() <= 127 and np.array_equal(grid, np.round(grid)))
    compact = grid.astype(np.int8) if small_ints else grid                  # QVH scores 0..4: int8 is exact
    flat_order = (order + np.arange(num_q)[:, None] * width).T.reshape(-1)
    by_rank = np.take(compact.reshape(num_q * width, 3), flat_order, axis=0).reshape(width, num_q, 3)
    by_rank[~in_video] = -1
    self.labels_by_rank = by_rank.reshape(width, num_q * 3)
    same_as_next = np.zeros((width, num_q), dtype=bool)
    np.equal(ranked[1:], ranked[:-1], out=same_as_next[:-1])
    same_as_next &= in_video
    same_as_next[:-1] &= in_video[1:]                                        # runs never reach past the clips
    self.run_end = np.repeat(in_video & ~same_as_next, 3, axis=1)
    run_start = np.ones((width, num_q), dtype=bool)
    run_start[1:] = ~same_as_next[:-1]
    start = accumulate_rows(np.maximum, np.where(run_start, np.arange(width)[:, None], 0))
    tied_p, tied_q = np.nonzero(~run_start)
    self.tied = (tied_p, tied_q, start[tied_p, tied_q])
    self.num_clips = num_clips


def highlight_ap_matrix(clips: RankedClips, min_score: int) -> np.ndarray:
  """HL-mAP as the official `get_ap` (sklearn precision_recall_curve, interpolated), in numpy.

  Recall changes exactly at the run ends whose run holds a positive (recall = tps / #pos; the float32 cast cannot
  merge two values k / n for n < 2**24), so those are the official `np.diff(recall) != 0` indices; the
  interpolated precision there is the max precision over that run end and all lower-scored run ends. The mean
  is taken in the official (reversed) order with numpy's summation. Returns the (Q, 3) AP per annotator.
  """
  width, num_cols = clips.labels_by_rank.shape
  labels = clips.labels_by_rank >= min_score
  tps = accumulate_rows(np.add, labels, np.float64)                # true positives up to each rank (exact ints)
  tps_before_run = np.empty_like(tps)                              # the count before each rank ...
  tps_before_run[0] = 0.0
  tps_before_run[1:] = tps[:-1]
  tied_p, tied_q, tied_start = clips.tied
  if len(tied_p):                                                  # ... or before its run, for tied scores
    exclusive = tps_before_run.reshape(width, num_cols // 3, 3)
    exclusive[tied_p, tied_q] = exclusive[tied_start, tied_q]
  num_pos = tps[-1]
  selected = clips.run_end & (tps > tps_before_run)
  precision = np.zeros_like(tps)
  np.divide(tps, np.arange(1.0, width + 1.0)[:, None], out=precision, where=clips.run_end)
  interpolated = accumulate_rows(np.maximum, precision[::-1])                # official (reversed) order
  sums = exact_column_sums(interpolated, selected[::-1])
  counts = selected.sum(axis=0)
  num_clips = np.repeat(clips.num_clips, 3)
  mixed = (num_pos > 0) & (num_pos < num_clips)
  ap = np.zeros(num_cols)
  ap[mixed] = sums[mixed] / counts[mixed]
  ap[(num_pos == num_clips) & (num_clips > 0)] = 1.0
  return ap.reshape(num_cols // 3, 3)


def _ranked_clips(prepared: Prepared) -> tuple[RankedClips, np.ndarray]:
  """The ranked clips of every query (scores truncated / zero-padded to #clips) and the GT grid."""
  grid = _gt_score_grid(prepared)                                          # (Q, C, 3)
  num_clips = prepared.gt_num_clips
  num_q, width, _ = grid.shape
  raw, _ = prepared.pred_saliency.padded(fill=0.0)
  scores = np.zeros((num_q, width))
  take = min(width, raw.shape[1])
  scores[:, :take] = raw[:, :take, 0]
  scores[np.arange(width)[None, :] >= num_clips[:, None]] = 0.0
  return RankedClips(grid, scores, num_clips), grid


def highlight_ap_per_query(prepared: Prepared, min_score: int) -> np.ndarray:
  """(Q, 3) HL AP per query and annotator with positives = GT score >= min_score."""
  return highlight_ap_matrix(_ranked_clips(prepared)[0], min_score)


def highlight_detection(prepared: Prepared) -> dict:
  """{"HL-min-Fair": {"HL-mAP", "HL-Hit1"}, "HL-min-Good": .., "HL-min-VeryGood": ..}."""
  clips, grid = _ranked_clips(prepared)
  top_scores, usable = _top_clip_scores(prepared.pred_saliency, grid, prepared.gt_num_clips)
  metrics = {}
  for name, min_score in HL_MIN_SCORES:
    ap = highlight_ap_matrix(clips, min_score)
    metrics[f'HL-min-{name}'] = {'HL-mAP': float(f'{100 * np.mean(ap):.2f}'),
                                 'HL-Hit1': _hit_at_one(top_scores, usable, min_score)}
  return metrics


# ------------------------------------------------------------------------------------------------------------
# eval_submission
# ------------------------------------------------------------------------------------------------------------
def evaluate(prepared: Prepared, *, highlight: bool = True) -> dict:
  """The official `eval_submission` dict: "brief", then the other keys sorted."""
  hl_thread = None
  if highlight and prepared.has_highlight:  # HD runs next to MR: numpy releases the GIL in its heavy parts
    hl_result: dict = {}

    def run_highlight():
      try:
        hl_result['value'] = highlight_detection(prepared)
      except BaseException as e:  # pylint: disable=broad-except  (re-raised in the caller's thread)
        hl_result['error'] = e

    hl_thread = threading.Thread(target=run_highlight, name='qvh-highlight')
    hl_thread.start()
  metrics = moment_retrieval(prepared)
  brief = moment_retrieval_brief(metrics)
  if hl_thread is not None:
    hl_thread.join()
    if 'error' in hl_result:
      raise hl_result['error']
    hl = hl_result['value']
    metrics.update(hl)
    for key, values in hl.items():
      for sub_key, value in values.items():
        brief[f'{key}-{sub_key.split("-")[1]}'] = value
  return {'brief': brief, **dict(sorted(metrics.items()))}
