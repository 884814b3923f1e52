"""Weak-MR metrics exactly as CPL's `MainRunner.eval`: R@1 / R@5 at IoU {0.1, 0.3, 0.5, 0.7, 0.9} and mIoU.

Windows are compared on [0, 1]-normalised times with CPL's IoU (fixture cpl_reference README §7, quirks Q24/Q26);
`evaluate_weak_files` scores a predictions jsonl against an annotation file (format in its docstring).
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from amr_jax.data import weak_mr as weak_data
from amr_jax.metrics.base import Evaluator
from amr_jax.metrics.common import SubmissionError, load_jsonl
from amr_jax.ops.spans import true_iou

# The original's `i / 10 for i in range(1, 10, 2)`, keyed 'IoU@0.{i}'.
THRESHOLD_STEPS = (1, 3, 5, 7, 9)
CHARADES_REPORTED = (3, 5, 7)          # what CPL's README reports per dataset
ACTIVITYNET_REPORTED = (1, 3, 5)
METER_BATCH_SIZE = 32                  # CPL's test batch: metrics are batch means averaged by a weighted meter
IOU_EPS = 1e-10
IOU_RULES = ('cpl', 'true')            # 'cpl' = the original hull IoU with 1e-10; 'true' = inter / union


def cpl_iou(pred_st, pred_ed, gt_st, gt_ed) -> np.ndarray:  # GENERIC-OP (CPL's hull IoU with 1e-10, numpy)
  """CPL's temporal IoU, broadcast, float64: (inter + 1e-10) / (hull + 1e-10), clamped at 0.

  inter = min(ends) - max(starts), hull = max(ends) - min(starts) (= the union when the windows overlap; disjoint
  windows get a negative inter and so 0; touching ones 1e-10 / hull). A hull below -1e-5 (reversed windows) gives
  0. float32 inputs are promoted to float64 first, as numpy does when the original stacks them with float64 GT.
  """
  pred_st, pred_ed, gt_st, gt_ed = (np.atleast_1d(np.asarray(x, np.float64)) for x in (pred_st, pred_ed, gt_st, gt_ed))
  hull_st, hull_ed = np.minimum(pred_st, gt_st), np.maximum(pred_ed, gt_ed)
  inter_st, inter_ed = np.maximum(pred_st, gt_st), np.minimum(pred_ed, gt_ed)
  iou = np.asarray(1.0 * (inter_ed - inter_st + IOU_EPS) / (hull_ed - hull_st + IOU_EPS))
  iou[(hull_ed - hull_st) < -1e-5] = 0
  iou[iou < 0] = 0.0
  return iou


def _batch_stats(iou: np.ndarray, steps: Sequence[int]) -> List[Tuple[str, float]]:
  """(key, value) of one test batch, in the original's key order: mIoU, then IoU@0.i."""
  bsz = iou.shape[0]
  out = [('mIoU', np.mean(iou))]
  out += [(f'IoU@0.{i}', 1.0 * np.sum(iou >= i / 10) / bsz) for i in steps]
  return out


class _Meter:
  """CPL's AverageMeter: sum += value * n, avg = sum / count."""

  def __init__(self):
    self.sum, self.count = 0, 0

  def update(self, value, n: int) -> None:
    self.sum += value * n
    self.count += n

  @property
  def avg(self) -> float:
    return float(self.sum / self.count)


def window_iou(pred_st, pred_ed, gt_st, gt_ed, rule: str = 'cpl') -> np.ndarray:
  """`cpl_iou` ('cpl', the original) or the exact IoU of `ops.spans.true_iou` ('true'), float64."""
  if rule not in IOU_RULES:
    raise ValueError(f'unknown IoU rule {rule!r} (known: {", ".join(IOU_RULES)})')
  if rule == 'true':
    args = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (pred_st, pred_ed, gt_st, gt_ed)))
    shape = args[0].shape
    return np.maximum(true_iou(*(np.atleast_1d(np.array(a)) for a in args)), 0.0).reshape(shape)
  return cpl_iou(pred_st, pred_ed, gt_st, gt_ed)


def weak_mr_metrics(ranked_windows: np.ndarray, gt_windows: np.ndarray, *, top1_windows: Optional[np.ndarray] = None,
                    top_n: int = 5, threshold_steps: Sequence[int] = THRESHOLD_STEPS,
                    meter_batch_size: int = METER_BATCH_SIZE, iou: str = 'cpl') -> Dict[str, float]:
  """CPL's evaluation on normalised windows.

  Args:
    ranked_windows: [N, K, 2] predictions in rank order (rank 0 = lowest NLL), normalised to [0, 1] (the
      original passes the float32 clamped proposal windows).
    gt_windows: [N, 2] GT / duration (float64 in the original).
    top1_windows: [N, 2] the R@1 windows when they are not rank 0 (vote-based top-1); None = rank 0.
    top_n: the n of R@n; the key is 'R@{min(K, top_n)}' and the max IoU over the top min(K, top_n) is used.
    threshold_steps: i of the thresholds i / 10 (keys 'IoU@0.i'); the original computes 1, 3, 5, 7, 9.
    meter_batch_size: the test batch size whose batch means the original averages with a weighted meter (32);
      0 = one global mean (the same up to the last bit).
    iou: 'cpl' (the original) or 'true' (`window_iou`).

  Returns:
    {'R@1,mIoU', 'R@1,IoU@0.1', ..., 'R@5,mIoU', ...} as fractions (not percent), in the original's order.
  """
  ranked = np.asarray(ranked_windows)
  gt = np.asarray(gt_windows, np.float64)
  if ranked.ndim != 3 or ranked.shape[-1] != 2 or gt.shape != (ranked.shape[0], 2):
    raise ValueError(f'expected ranked_windows [N, K, 2] and gt_windows [N, 2], got {ranked.shape} and {gt.shape}')
  top1 = ranked[:, 0] if top1_windows is None else np.asarray(top1_windows)
  k = min(ranked.shape[1], top_n)
  n = ranked.shape[0]
  size = meter_batch_size if meter_batch_size > 0 else max(n, 1)
  meters: Dict[str, _Meter] = {}
  for start in range(0, n, size):
    sl = slice(start, min(start + size, n))
    bsz = sl.stop - sl.start
    g = gt[sl]
    iou1 = window_iou(top1[sl, 0], top1[sl, 1], g[:, 0], g[:, 1], iou)
    for key, value in _batch_stats(iou1, threshold_steps):
      meters.setdefault('R@1,' + key, _Meter()).update(value, bsz)
    ious = [window_iou(ranked[sl, j, 0], ranked[sl, j, 1], g[:, 0], g[:, 1], iou) for j in range(k)]
    iou_n = np.max(np.stack(ious, 1), 1)
    for key, value in _batch_stats(iou_n, threshold_steps):
      meters.setdefault(f'R@{k},' + key, _Meter()).update(value, bsz)
  return {key: meter.avg for key, meter in meters.items()}


def reported(metrics: Mapping[str, float], dataset: str = 'charades') -> Dict[str, float]:
  """The subset CPL's README reports, in percent: Charades IoU {0.3, 0.5, 0.7}, ActivityNet {0.1, 0.3, 0.5}."""
  steps = CHARADES_REPORTED if dataset.lower().startswith('charades') else ACTIVITYNET_REPORTED
  out = {}
  for key, value in metrics.items():
    head, _, tail = key.partition(',')
    if tail == 'mIoU' or any(tail == f'IoU@0.{i}' for i in steps):
      out[f'{head},{tail}'] = 100.0 * value
  return out


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------
def _window_list(value) -> Optional[List[Tuple[float, float]]]:
  if not isinstance(value, list) or not value:
    return None
  out = []
  for w in value:
    if not (isinstance(w, (list, tuple)) and len(w) == 2 and all(isinstance(x, (int, float)) and
                                                                 not isinstance(x, bool) and math.isfinite(x)
                                                                 for x in w)):
      return None
    out.append((float(w[0]), float(w[1])))
  return out


def evaluate_weak_files(predictions_path: Union[str, os.PathLike], annotations_path: Union[str, os.PathLike], *,
                        durations: Optional[Mapping[str, float]] = None, top_n: int = 5,
                        threshold_steps: Sequence[int] = THRESHOLD_STEPS,
                        meter_batch_size: int = METER_BATCH_SIZE, iou: str = 'cpl') -> Dict[str, float]:
  """Scores a weak-MR predictions jsonl against an annotation file, as `weak_mr_metrics`.

  Predictions jsonl, one row per query:
    {"qid": <int or str> (or "id"), "vid": <str, optional, checked when present>,
     "pred_windows_sec": [[start, end], ...]   ranked, best first, in seconds (top-5 is enough),
     "pred_top1_sec": [start, end]             optional: the R@1 window when it is not rank 0 (vote-based)}
  Windows are divided by the annotation's duration (float64); metrics are averaged over the annotation file's
  order in batches of `meter_batch_size` (the original test loader). Every annotated query needs one row.

  Args:
    predictions_path: the jsonl above.
    annotations_path: any file `weak_mr.load_weak_annotations` reads (Charades txt needs `durations`).
    durations: vid -> seconds for annotation rows without one.

  Raises:
    SubmissionError: every problem at once, one line each (file, qid, field).
  """
  predictions_path = os.fspath(predictions_path)
  try:
    records = weak_data.load_weak_annotations(annotations_path, durations=durations)
  except weak_data.WeakDataError as e:
    raise SubmissionError([str(p) for p in e.problems]) from None
  rows, line_numbers = load_jsonl(predictions_path)
  problems: List[str] = []
  by_qid: Dict[str, Tuple[dict, int]] = {}
  for row, line in zip(rows, line_numbers):
    where = f'{predictions_path}:{line}'
    if not isinstance(row, dict):
      problems.append(f'{where}: field=row: expected a JSON object')
      continue
    qid = row.get('qid', row.get('id'))
    if qid is None or isinstance(qid, (bool, float, list, dict)):
      problems.append(f'{where}: field=qid: expected an integer or string qid (or id), got {qid!r}')
      continue
    key = str(qid)
    if key in by_qid:
      problems.append(f'{where}: qid={qid} field=qid: duplicate prediction (first at line {by_qid[key][1]})')
      continue
    windows = _window_list(row.get('pred_windows_sec'))
    if windows is None:
      problems.append(f'{where}: qid={qid} field=pred_windows_sec: expected a non-empty list of [start, end] '
                      'finite numbers')
      continue
    if 'pred_top1_sec' in row and _window_list([row['pred_top1_sec']]) is None:
      problems.append(f'{where}: qid={qid} field=pred_top1_sec: expected [start, end] finite numbers')
      continue
    by_qid[key] = (row, line)
  ranked, top1, gt = [], [], []
  # Rows may hold different numbers of windows: each is cut to `depth` and padded with copies of its last window
  # (which leaves the max IoU over the top-n unchanged); the key is R@depth, as the original's R@min(K, 5).
  depth = min(top_n, max((len(r['pred_windows_sec']) for r, _ in by_qid.values()), default=top_n))
  seen = set()
  for record in records:
    key = str(record.qid)
    where = f'{record.source}:{record.line}: vid={record.vid} qid={record.qid}'
    if record.duration is None or not (math.isfinite(record.duration) and record.duration > 0):
      problems.append(f'{where} field=duration: needs a positive duration to normalise windows')
      continue
    if len(record.windows) != 1:
      problems.append(f'{where} field=timestamps: expected one GT window')
      continue
    if key not in by_qid:
      problems.append(f'{where} field=qid: no prediction in {predictions_path}')
      continue
    row, line = by_qid[key]
    seen.add(key)
    if 'vid' in row and row['vid'] != record.vid:
      problems.append(f'{predictions_path}:{line}: qid={record.qid} field=vid: {row["vid"]!r} but the annotation '
                      f'says {record.vid!r}')
      continue
    duration = np.float64(record.duration)
    windows = _window_list(row['pred_windows_sec'])[:depth]
    windows = np.asarray(windows + windows[-1:] * (depth - len(windows)), np.float64) / duration
    ranked.append(windows)
    top1.append(np.asarray(row.get('pred_top1_sec', row['pred_windows_sec'][0]), np.float64) / duration)
    gt.append(np.asarray(record.windows[0], np.float64) / duration)
  extra = [k for k in by_qid if k not in seen and k not in {str(r.qid) for r in records}]
  for key in extra[:1]:
    problems.append(f'{predictions_path}:{by_qid[key][1]}: qid={key} field=qid: not in {annotations_path} '
                    f'({len(extra)} such row(s))')
  if problems:
    raise SubmissionError(problems)
  if not ranked:
    raise SubmissionError([f'{annotations_path}: field=file: no annotated query to score'])
  return weak_mr_metrics(np.stack(ranked), np.stack(gt), top1_windows=np.stack(top1), top_n=top_n,
                         threshold_steps=threshold_steps, meter_batch_size=meter_batch_size, iou=iou)


def write_predictions(path: Union[str, os.PathLike], qids: Sequence, vids: Sequence[str],
                      ranked_windows_sec: np.ndarray, top1_sec: Optional[np.ndarray] = None) -> None:
  """Writes the predictions jsonl `evaluate_weak_files` reads (ranked windows in seconds, optional top-1)."""
  path = os.fspath(path)
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    for i, (qid, vid) in enumerate(zip(qids, vids)):
      row = {'qid': qid.item() if hasattr(qid, 'item') else qid, 'vid': vid,
             'pred_windows_sec': np.asarray(ranked_windows_sec[i], np.float64).tolist()}
      if top1_sec is not None:
        row['pred_top1_sec'] = np.asarray(top1_sec[i], np.float64).tolist()
      f.write(json.dumps(row) + '\n')


# ----------------------------------------------------------------------------------------------------
# The evaluator type 'weak_mr' (config.evals, launch/evaluate.py --task=weak_mr)
# ----------------------------------------------------------------------------------------------------
TOP1_VARIANTS = ('top1_loss_sec', 'top1_vote_charades_sec', 'top1_vote_activitynet_sec')


def scalar_name(key: str) -> str:
  """'R@1,IoU@0.5' -> 'R1@0.5', 'R@5,mIoU' -> 'R5_mIoU' (the names logged and picked by eval.best_metric)."""
  head, _, tail = key.partition(',')
  rank = head.replace('R@', 'R')
  return f'{rank}_mIoU' if tail == 'mIoU' else f'{rank}@{tail.replace("IoU@", "")}'


class WeakMREvaluator(Evaluator):
  """CPL's evaluation of prediction rows (`pred_windows_sec` ranked, optional `pred_top1_sec`, plus any of the
  top-1 variant fields) against ground truth [{qid, vid, duration, window}] in annotation order.

  Options: top_n (5), iou ('cpl' | 'true'), meter_batch_size (32), durations_from (annotation files with
  durations, for Charades txt in evaluate_files).
  """

  def _options(self):
    return dict(top_n=int(self.options.get('top_n', 5)), iou=str(self.options.get('iou', 'cpl')),
                meter_batch_size=int(self.options.get('meter_batch_size', METER_BATCH_SIZE)))

  def evaluate(self, predictions, ground_truth) -> dict:
    by_qid = {str(row['qid']): row for row in predictions}
    missing = [g['qid'] for g in ground_truth if str(g['qid']) not in by_qid]
    if missing:
      raise SubmissionError([f'qid={missing[0]} field=qid: no prediction ({len(missing)} such querie(s))'])
    rows = [by_qid[str(g['qid'])] for g in ground_truth]
    duration = np.array([g['duration'] for g in ground_truth], np.float64)[:, None]
    gt = np.array([g['window'] for g in ground_truth], np.float64) / duration
    depth = min(self._options()['top_n'], min(len(r['pred_windows_sec']) for r in rows))
    ranked = np.array([r['pred_windows_sec'][:depth] for r in rows], np.float64) / duration[:, :, None]
    top1 = np.array([r.get('pred_top1_sec', r['pred_windows_sec'][0]) for r in rows], np.float64) / duration
    result = {'main': weak_mr_metrics(ranked, gt, top1_windows=top1, **self._options())}
    for field in TOP1_VARIANTS:
      if all(field in r for r in rows):
        variant = np.array([r[field] for r in rows], np.float64) / duration
        scores = weak_mr_metrics(ranked[:, :1], gt, top1_windows=variant, top_n=1,
                                 meter_batch_size=self._options()['meter_batch_size'], iou=self._options()['iou'])
        result[field.replace('_sec', '')] = {k: v for k, v in scores.items() if k.startswith('R@1,')}
    return result

  def evaluate_files(self, submission_path, annotations_path) -> dict:
    durations = None
    if self.options.get('durations_from'):
      durations = weak_data.read_durations(self.options['durations_from'])
    return {'main': evaluate_weak_files(submission_path, annotations_path, durations=durations,
                                        **self._options())}

  def scalars(self, result) -> dict:
    out = {scalar_name(k): float(v) for k, v in result['main'].items()}
    for field, scores in result.items():
      if field != 'main':
        out.update({f'{field}/{scalar_name(k)}': float(v) for k, v in scores.items()})
    return out

  def brief(self, result) -> dict:
    return {k: round(100 * v, 2) for k, v in self.scalars(result).items()
            if '/' not in k and ('@0.3' in k or '@0.5' in k or '@0.7' in k or 'mIoU' in k)}
