"""Validation of a submission against its ground truth, and conversion of both into flat numpy tables.

Every problem is one line naming the file and the qid (or line): unknown/missing/duplicate qids, malformed rows,
non-numeric, NaN or infinite values. `validate()` returns them all; `prepare()` raises `SubmissionError`.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import numbers

import numpy as np

from amr_jax.metrics.common import CLIP_LENGTH_SEC, SubmissionError, WindowTable

_MAX_SHOWN = 60  # characters of an offending value quoted in a message


@dataclasses.dataclass
class Prepared:
  """Submission and GT as flat tables, both in submission row order.

  Attributes:
    qids: the qids in submission order.
    pred_windows: width 3 [start, end, score], every predicted window in list order.
    gt_windows: width 2 [start, end], the GT windows of the same qids.
    pred_saliency: width 1, the raw pred_saliency_scores; None when highlight metrics are not computed.
    gt_num_clips: (Q,) int(duration / 2) per query; None without highlight metrics.
    gt_clip_ids: width 1 (integral values), relevant_clip_ids; None without highlight metrics.
    gt_saliency: width 3, saliency_scores of the relevant clips; None without highlight metrics.
  """
  qids: list
  pred_windows: WindowTable
  gt_windows: WindowTable
  pred_saliency: WindowTable | None = None
  gt_num_clips: np.ndarray | None = None
  gt_clip_ids: WindowTable | None = None
  gt_saliency: WindowTable | None = None

  @property
  def has_highlight(self) -> bool:
    return self.pred_saliency is not None


def _is_number(value) -> bool:
  if type(value) is int or type(value) is float:  # pylint: disable=unidiomatic-typecheck  (fast path)
    return math.isfinite(value)
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value) -> str:
  text = repr(value)
  return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + '...'


def _normalised_qid(qid):
  """The qid as a hashable int or str, or None when it is neither."""
  if type(qid) is int:  # pylint: disable=unidiomatic-typecheck  (fast path)
    return qid
  if isinstance(qid, bool):
    return None
  if isinstance(qid, numbers.Integral):
    return int(qid)
  if isinstance(qid, str):
    return qid
  return None


def _fast_numeric(lists: list, width: int | None) -> np.ndarray | None:
  """All entries of `lists` concatenated as float64 ((n, width) or (n,)), or None if anything is off.

  Entries are flattened to one list of scalars before numpy sees them (much faster than nested lists); the
  length of every entry is checked first so that flattening cannot hide a malformed entry.
  """
  entries = list(itertools.chain.from_iterable(lists))
  if width:
    try:
      if entries and set(map(len, entries)) != {width}:
        return None
    except TypeError:
      return None
    scalars = list(itertools.chain.from_iterable(entries))
  else:
    scalars = entries
  if not scalars:
    return np.zeros((0, width) if width else (0,), dtype=np.float64)
  try:
    array = np.array(scalars)
  except (ValueError, TypeError, OverflowError):
    return None
  if array.dtype.kind not in 'iuf' or array.ndim != 1:
    return None
  array = array.astype(np.float64, copy=False)
  if not np.isfinite(array).all():
    return None
  return array.reshape(-1, width) if width else array


def _slow_numeric_problems(where: str, field: str, values, width: int | None, what: str,
                           extra_ok: bool) -> list[str]:
  """Names every malformed entry of one row's list (width None: the entries are numbers)."""
  problems = []
  for j, entry in enumerate(values):
    if width is None:
      ok = _is_number(entry)
    else:
      ok = (isinstance(entry, (list, tuple, np.ndarray)) and (len(entry) == width or extra_ok and len(entry) > width)
            and all(_is_number(v) for v in entry[:width]))
    if not ok:
      problems.append(f'{where}: {field}[{j}] = {_shown(entry)} is not {what}')
  return problems


def _numeric_table(lists: list, wheres: list[str], field: str, width: int | None, what: str,
                   problems: list[str], extra_ok: bool = False) -> WindowTable | None:
  """A WindowTable from one list per row; problems are appended (then None is returned).

  With `extra_ok`, entries longer than `width` are accepted and cut to `width` (the official scripts read only
  w[0], w[1] (, w[2]) of a window).
  """
  array = _fast_numeric(lists, width)
  if array is None:
    found = []
    for where, values in zip(wheres, lists):
      found += _slow_numeric_problems(where, field, values, width, what, extra_ok)
    if found:
      problems += found
      return None
    flat = list(itertools.chain.from_iterable(lists))
    array = np.array([[float(x) for x in v[:width]] for v in flat] if width else [float(v) for v in flat],
                     dtype=np.float64).reshape((-1, width) if width else (-1,))
  if width is None:
    array = array.reshape(-1, 1)
  return WindowTable.from_counts(array, [len(values) for values in lists])


def _unique_row_qid(row, name: str, lines, i: int, seen, problems: list):
  """(label, qid) of row i of file `name`; qid None (with one problem line) for a non-object row, a missing or
  ill-typed qid, or a qid already in `seen`."""
  label = _row_label(name, lines, i)
  if not isinstance(row, dict):
    problems.append(f'{label}: row is not a JSON object')
    return label, None
  qid = _normalised_qid(row.get('qid'))
  if qid is None:
    problems.append(f'{label}: qid {_shown(row.get("qid"))} missing or not an int/str')
    return label, None
  if qid in seen:
    problems.append(f'{name}: qid {qid}: duplicate qid ({label})')
    return label, None
  return label, qid


def _row_label(name: str, lines, i: int) -> str:
  return f'{name}: line {lines[i]}' if lines is not None else f'{name}: row {i + 1}'


def _is_list(value) -> bool:
  return type(value) is list or isinstance(value, (tuple, np.ndarray))  # pylint: disable=unidiomatic-typecheck


def prepare(task: str, submission_rows: list, gt_rows: list, *, submission_name: str = 'submission',
            annotations_name: str = 'annotations', submission_lines=None, annotations_lines=None) -> Prepared:
  """Validates and converts; raises SubmissionError listing every problem.

  Highlight tables are filled for task 'qvh' when any submission row has `pred_saliency_scores` and any GT row
  has `saliency_scores`; then every row must have them.
  """
  problems: list[str] = []
  sub, ann = submission_name, annotations_name

  # --- ground truth -------------------------------------------------------------------------------------------
  gt_index: dict = {}
  gt_window_lists, gt_wheres = [], []
  gt_kept_rows = []
  for i, row in enumerate(gt_rows):
    _, qid = _unique_row_qid(row, ann, annotations_lines, i, gt_index, problems)
    if qid is None:
      continue
    where = f'{ann}: qid {qid}'
    windows = row.get('relevant_windows')
    if not _is_list(windows) or len(windows) == 0:
      problems.append(f'{where}: no relevant_windows (an unlabelled split cannot be scored)')
      windows = []
    gt_index[qid] = len(gt_kept_rows)
    gt_kept_rows.append(row)
    gt_window_lists.append(windows)
    gt_wheres.append(where)
  gt_windows = _numeric_table(gt_window_lists, gt_wheres, 'relevant_windows', 2, '[start, end] with finite numbers',
                              problems, extra_ok=True)

  # --- submission ---------------------------------------------------------------------------------------------
  sub_qids, sub_gt_rows, pred_lists, pred_wheres, saliency_lists = [], [], [], [], []
  seen: set = set()
  want_saliency = task == 'qvh' and any(isinstance(r, dict) and 'pred_saliency_scores' in r
                                        for r in submission_rows)
  for i, row in enumerate(submission_rows):
    _, qid = _unique_row_qid(row, sub, submission_lines, i, seen, problems)
    if qid is None:
      continue
    where = f'{sub}: qid {qid}'
    seen.add(qid)
    if qid not in gt_index:
      problems.append(f'{where}: unknown qid (not in {ann})')
      continue
    windows = row.get('pred_relevant_windows')
    if not _is_list(windows):
      problems.append(f'{where}: pred_relevant_windows {"missing" if windows is None else "is not a list"}')
      continue
    saliency = None
    if want_saliency:
      saliency = row.get('pred_saliency_scores')
      if not _is_list(saliency):
        problems.append(f'{where}: pred_saliency_scores {"missing" if saliency is None else "is not a list"}'
                        ' (other rows have it)')
        continue
    sub_qids.append(qid)
    sub_gt_rows.append(gt_index[qid])
    pred_lists.append(windows)
    pred_wheres.append(where)
    saliency_lists.append(saliency)
  for qid in gt_index:
    if qid not in seen:
      problems.append(f'{sub}: qid {qid}: missing (in {ann} but not in the submission)')
  pred_windows = _numeric_table(pred_lists, pred_wheres, 'pred_relevant_windows', 3,
                                '[start, end, score] with finite numbers', problems, extra_ok=True)

  # --- highlight tables (qvh only) ----------------------------------------------------------------------------
  highlight = {}
  gt_has_saliency = any('saliency_scores' in r for r in gt_kept_rows)
  if want_saliency and gt_has_saliency:
    highlight = _prepare_highlight(sub_gt_rows, gt_kept_rows, gt_wheres, saliency_lists, pred_wheres, problems)

  if problems:
    raise SubmissionError(problems)
  gt_in_sub_order = gt_windows.take_rows(np.asarray(sub_gt_rows, dtype=np.int64))
  return Prepared(qids=sub_qids, pred_windows=pred_windows, gt_windows=gt_in_sub_order, **highlight)


def _prepare_highlight(sub_gt_rows, gt_rows, gt_wheres, saliency_lists, pred_wheres, problems) -> dict:
  """GT clip grids (durations, relevant clip ids, saliency scores) and predicted saliency, in submission order."""
  pred_saliency = _numeric_table(saliency_lists, pred_wheres, 'pred_saliency_scores', None, 'a finite number',
                                 problems)
  num_clips, clip_id_lists, score_lists, wheres = [], [], [], []
  for gt_row_index in sub_gt_rows:
    row, where = gt_rows[gt_row_index], gt_wheres[gt_row_index]
    duration, clip_ids, scores = row.get('duration'), row.get('relevant_clip_ids'), row.get('saliency_scores')
    row_ok = True
    if not _is_number(duration) or duration < 0:
      problems.append(f'{where}: duration {_shown(duration)} is not a non-negative number')
      row_ok = False
    if not _is_list(clip_ids) or not _is_list(scores):
      problems.append(f'{where}: relevant_clip_ids and saliency_scores are needed for highlight metrics')
      row_ok = False
    elif len(clip_ids) != len(scores):
      problems.append(f'{where}: {len(clip_ids)} relevant_clip_ids but {len(scores)} saliency_scores')
      row_ok = False
    if not row_ok:
      continue
    num_clips.append(int(duration / CLIP_LENGTH_SEC))
    clip_id_lists.append(clip_ids)
    score_lists.append(scores)
    wheres.append(where)
  if problems:
    return {}
  clip_ids = _clip_id_table(clip_id_lists, num_clips, wheres, [gt_rows[g].get('duration') for g in sub_gt_rows],
                            problems)
  saliency = _numeric_table(score_lists, wheres, 'saliency_scores', 3, '3 finite annotator scores', problems)
  if problems:
    return {}
  return dict(pred_saliency=pred_saliency, gt_num_clips=np.asarray(num_clips, dtype=np.int64),
              gt_clip_ids=clip_ids, gt_saliency=saliency)


def _clip_id_table(clip_id_lists, num_clips, wheres, durations, problems) -> WindowTable | None:
  """relevant_clip_ids as a table; each id must be an int in [0, int(duration / 2))."""
  counts = [len(ids) for ids in clip_id_lists]
  flat = list(itertools.chain.from_iterable(clip_id_lists))
  try:
    ids = np.array(flat, dtype=None) if flat else np.zeros(0, dtype=np.int64)
  except (ValueError, TypeError, OverflowError):
    ids = None
  if ids is not None and ids.dtype.kind in 'iu' and ids.ndim == 1:
    limits = np.repeat(np.asarray(num_clips, dtype=np.int64), counts)
    if ((ids >= 0) & (ids < limits)).all():
      return WindowTable.from_counts(ids.astype(np.float64).reshape(-1, 1), counts)
  found = []
  for where, row_ids, n, duration in zip(wheres, clip_id_lists, num_clips, durations):
    bad = [c for c in row_ids if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c < n]
    if bad:
      found.append(f'{where}: relevant_clip_ids {_shown(bad)} are not clip indices in [0, {n}) '
                   f'(duration {duration})')
  if found:
    problems += found
    return None
  return WindowTable.from_counts(np.array([float(c) for c in flat], dtype=np.float64).reshape(-1, 1), counts)


def validate(task: str, submission_rows: list, gt_rows: list, **names) -> list[str]:
  """Every problem of a submission against its GT, one line each (empty when the pair can be scored)."""
  try:
    prepare(task, submission_rows, gt_rows, **names)
  except SubmissionError as e:
    return e.problems
  return []
