"""FlashMMR inference post-processing in numpy: clamp → 4-decimal rows → clip_ts/round → NMS (score := 0).

Reproduces `compute_mr_results`, `PostProcessorDETR` (hl) and `post_processing_mr_nms`, torch sort order included.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from amr_jax.ops import nms as nms_lib


@dataclasses.dataclass(frozen=True)
class FlashMMRPostprocessConfig:
  """Post-processing settings (hl defaults of the reference).

  Attributes:
    clip_length: seconds per clip; windows are rounded to multiples of it.
    min_ts_val, max_ts_val: `clip_ts` range applied after the duration clamp.
    nms_thd: IoU threshold; a later row with IoU ≥ nms_thd gets score 0 (kept, re-sorted).
    max_num_moment: windows per query (the network's top-k).
    clip_to_fixed_max_ts: §9.9 clamp to [0, duration] and then to the fixed [min_ts_val, max_ts_val] (False:
      the fixed `clip_ts` step is skipped, only the duration clamp applies).
    zero_length_iou_is_nan: §7.4 IoU of two zero-length windows is 0/0 = nan, which never suppresses (False:
      identical zero-length windows count as IoU 1).
    round_windows: apply `round_multiple` (hl and Charades do).
    emulate_torch_sort: the final `sort(descending=True)` reproduces torch's CPU sort (libstdc++ introsort, not
      stable), which decides the order of exactly tied scores, e.g. the suppressed 0-score rows (False: stable
      descending sort, first row first among ties).
  """
  clip_length: float = 2.0
  min_ts_val: float = 0.0
  max_ts_val: float = 150.0
  nms_thd: float = 0.7
  max_num_moment: int = 50
  clip_to_fixed_max_ts: bool = True
  zero_length_iou_is_nan: bool = True
  round_windows: bool = True
  emulate_torch_sort: bool = True


class _TorchCpuSortDescending:
  """libstdc++ `std::sort` (introsort) on (value, index) pairs with torch's `KeyValueCompDesc` comparator.

  torch's non-stable CPU `sort(descending=True)` runs this algorithm, so it fixes the order of exactly tied
  values. Steps: introsort loop (median-of-three pivot moved to the front, unguarded Hoare partition, recurse on
  the right part, loop on the left) while a range has more than 16 elements, heapsort when the depth budget
  2·floor(log2 n) runs out, then a final insertion sort (guarded on the first 16, unguarded after).
  """
  THRESHOLD = 16

  def __init__(self, values: np.ndarray):
    self.items = [(float(v), i) for i, v in enumerate(np.asarray(values).reshape(-1))]

  @staticmethod
  def before(lhs, rhs) -> bool:
    """comp(lhs, rhs): lhs sorts first (nan first, then larger values)."""
    return (np.isnan(lhs[0]) and not np.isnan(rhs[0])) or lhs[0] > rhs[0]

  def swap(self, i: int, j: int) -> None:
    self.items[i], self.items[j] = self.items[j], self.items[i]

  def move_median_to_first(self, result: int, a: int, b: int, c: int) -> None:
    it, before = self.items, self.before
    if before(it[a], it[b]):
      if before(it[b], it[c]):
        self.swap(result, b)
      elif before(it[a], it[c]):
        self.swap(result, c)
      else:
        self.swap(result, a)
    elif before(it[a], it[c]):
      self.swap(result, a)
    elif before(it[b], it[c]):
      self.swap(result, c)
    else:
      self.swap(result, b)

  def unguarded_partition(self, first: int, last: int, pivot: int) -> int:
    it, before = self.items, self.before
    while True:
      while before(it[first], it[pivot]):
        first += 1
      last -= 1
      while before(it[pivot], it[last]):
        last -= 1
      if not first < last:
        return first
      self.swap(first, last)
      first += 1

  def push_heap(self, first: int, hole: int, top: int, value) -> None:
    it = self.items
    parent = (hole - 1) // 2
    while hole > top and self.before(it[first + parent], value):
      it[first + hole] = it[first + parent]
      hole = parent
      parent = (hole - 1) // 2
    it[first + hole] = value

  def adjust_heap(self, first: int, hole: int, length: int, value) -> None:
    it = self.items
    top, child = hole, hole
    while child < (length - 1) // 2:
      child = 2 * (child + 1)
      if self.before(it[first + child], it[first + child - 1]):
        child -= 1
      it[first + hole] = it[first + child]
      hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
      child = 2 * (child + 1)
      it[first + hole] = it[first + child - 1]
      hole = child - 1
    self.push_heap(first, hole, top, value)

  def heap_sort(self, first: int, last: int) -> None:
    length = last - first
    if length >= 2:
      parent = (length - 2) // 2
      while True:
        self.adjust_heap(first, parent, length, self.items[first + parent])
        if parent == 0:
          break
        parent -= 1
    while last - first > 1:
      last -= 1
      value = self.items[last]
      self.items[last] = self.items[first]
      self.adjust_heap(first, 0, last - first, value)

  def introsort_loop(self, first: int, last: int, depth: int) -> None:
    while last - first > self.THRESHOLD:
      if depth == 0:
        self.heap_sort(first, last)
        return
      depth -= 1
      mid = first + (last - first) // 2
      self.move_median_to_first(first, first + 1, mid, last - 1)
      cut = self.unguarded_partition(first + 1, last, first)
      self.introsort_loop(cut, last, depth)
      last = cut

  def unguarded_linear_insert(self, last: int) -> None:
    it = self.items
    value = it[last]
    prev = last - 1
    while self.before(value, it[prev]):
      it[last] = it[prev]
      last = prev
      prev -= 1
    it[last] = value

  def insertion_sort(self, first: int, last: int) -> None:
    it = self.items
    for i in range(first + 1, last):
      if self.before(it[i], it[first]):
        value = it[i]
        it[first + 1:i + 1] = it[first:i]
        it[first] = value
      else:
        self.unguarded_linear_insert(i)

  def order(self) -> np.ndarray:
    n = len(self.items)
    if n > 1:
      self.introsort_loop(0, n, 2 * (n.bit_length() - 1))
      if n > self.THRESHOLD:
        self.insertion_sort(0, self.THRESHOLD)
        for i in range(self.THRESHOLD, n):
          self.unguarded_linear_insert(i)
      else:
        self.insertion_sort(0, n)
    return np.array([i for _, i in self.items], np.int64)


def torch_sort_descending(values: np.ndarray) -> np.ndarray:
  """Index order of torch's CPU `values.sort(descending=True)` (exact, including the order of ties)."""
  return _TorchCpuSortDescending(values).order()


def descending_order(values: np.ndarray, emulate_torch_sort: bool = True) -> np.ndarray:
  """Descending index order: torch's CPU tie order, or stable (first index first)."""
  if emulate_torch_sort:
    return torch_sort_descending(values)
  return np.argsort(-np.asarray(values), kind="stable")


def top_moments(decoded: np.ndarray, max_num_moment: int, emulate_torch_sort: bool = True) -> np.ndarray:
  """Eval-branch `boundary` of one query: the top-k [st, ed, score] rows of `decoded` ([P, 3], point order)."""
  decoded = np.asarray(decoded)
  order = descending_order(decoded[:, 2], emulate_torch_sort)
  return decoded[order[:max_num_moment]]


def round4(value: float) -> float:
  """`float(f"{e:.4f}")` of the reference."""
  return float(f"{value:.4f}")


def clamp_rows(boundary: np.ndarray, duration: float) -> List[List[float]]:
  """Stage 1: `torch.clamp(boundary, 0, duration)` on all 3 columns, then 4-decimal python floats.

  Args:
    boundary: [K, 3] float32 `[st, ed, score]` seconds, sorted by score (the network's top-k).
    duration: video duration in seconds.

  Returns:
    list of [st, ed, score] rows.
  """
  boundary = np.asarray(boundary, np.float32)
  clamped = np.clip(boundary, np.float32(0), np.float32(duration))
  return [[round4(float(e)) for e in row] for row in clamped]


def postprocess_rows(rows: Sequence[Sequence[float]], config: FlashMMRPostprocessConfig) -> List[List[float]]:
  """Stage 2 (`PostProcessorDETR` hl): float32 `clip_ts` to [min, max] then round to clip multiples.

  Args:
    rows: stage-1 rows.
    config: post-processing config.

  Returns:
    rows with float32-exact windows and 4-decimal scores.
  """
  table = np.asarray(rows, np.float32).reshape(-1, 3)
  windows = table[:, :2]
  if config.clip_to_fixed_max_ts:
    windows = np.clip(windows, np.float32(config.min_ts_val), np.float32(config.max_ts_val))
  if config.round_windows:
    clip_len = np.float32(config.clip_length)
    windows = (np.round(windows / clip_len) * clip_len).astype(np.float32)  # half-to-even like torch.round
  return [[float(w[0]), float(w[1]), round4(float(s))] for w, s in zip(windows, table[:, 2])]


def nms_rows(rows: Sequence[Sequence[float]], config: FlashMMRPostprocessConfig) -> List[List[float]]:
  """Stage 3 (`post_processing_mr_nms`, type "normal"): greedy swap-NMS in float32; nothing is removed.

  For i = 0..N−1 the max-score row of rows[i:] (first index on ties) is swapped to i, and later rows with
  IoU ≥ nms_thd get score 0. Finally rows are sorted by score, descending, with torch's CPU tie order
  (`emulate_torch_sort`).

  Args:
    rows: stage-2 rows.
    config: post-processing config.

  Returns:
    float32-valued rows (python floats of float32, as `tensor.tolist()`).
  """
  bnd = nms_lib.suppress_scores(rows, config.nms_thd, dtype=np.float32,
                                 zero_length_iou_is_nan=config.zero_length_iou_is_nan)
  order = descending_order(bnd[:, -1], config.emulate_torch_sort)
  return [[float(v) for v in row] for row in bnd[order]]


def submission_record(qid: Any, query: str, vid: str, windows: List[List[float]],
                      saliency: Optional[Sequence[float]]) -> Dict[str, Any]:
  record = dict(qid=qid, query=query, vid=vid, pred_relevant_windows=windows)
  if saliency is not None:
    record["pred_saliency_scores"] = list(saliency)
  return record


def make_submissions(queries: Sequence[Dict[str, Any]], config: FlashMMRPostprocessConfig
                     ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]], List[Dict[str, Any]]]:
  """All three submission stages for a list of queries.

  Args:
    queries: dicts with `qid`, `query`, `vid`, `duration`, `boundary` ([K, 3] float32 network top-k, seconds)
      and optionally `saliency` ([Lv] saliency of the valid clips).
    config: post-processing config.

  Returns:
    (before_postprocess, postprocessed, after_nms) lists of submission records.
  """
  before, processed, after = [], [], []
  for q in queries:
    saliency = None if q.get("saliency") is None else [round4(float(e)) for e in np.asarray(q["saliency"])]
    stage1 = clamp_rows(q["boundary"], float(q["duration"]))
    stage2 = postprocess_rows(stage1, config)
    stage3 = nms_rows(stage2, config)
    before.append(submission_record(q["qid"], q["query"], q["vid"], stage1, saliency))
    processed.append(submission_record(q["qid"], q["query"], q["vid"], stage2, saliency))
    after.append(submission_record(q["qid"], q["query"], q["vid"], stage3, saliency))
  return before, processed, after
