"""Boost: 2-fold cross-validated wrong-span mining (the unreleased AMR step, rebuilt from its description).

The selection rule (the runs themselves: amr_jax/workflows/boost_mining.py). Train on one fold, predict the other: confident predictions (score > theta) with IoU 0 to
every GT window become `wrong_spans`, snapped to the 2 s grid; then the folds swap. See docs/DECISIONS.md.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from amr_jax.data.records import CLIP_LEN_SEC, MomentRecord
from amr_jax.ops import spans as spans_lib
from data_pipelines.batches import seeded_rng


def split_folds(records: Sequence[MomentRecord], seed: int, num_folds: int = 2) -> list[list[MomentRecord]]:
  """Disjoint folds by video (all queries of a video in one fold), balanced in query count."""
  vids = sorted({r.vid for r in records})
  order = seeded_rng(seed, 'folds').permutation(len(vids))
  fold_of = {vids[i]: k % num_folds for k, i in enumerate(order)}
  return [[r for r in records if fold_of[r.vid] == k] for k in range(num_folds)]


def snap_to_grid(st: float, ed: float, duration: float, grid: float = CLIP_LEN_SEC) -> tuple[float, float]:
  """Outward-free snap: round both ends to the grid (half to even), clip to [0, floor(duration/grid)*grid]."""
  hi = math.floor(duration / grid) * grid
  s = float(np.clip(np.round(st / grid) * grid, 0, hi))
  e = float(np.clip(np.round(ed / grid) * grid, 0, hi))
  return s, e


def wrong_spans_from_prediction(record: MomentRecord, pred_windows: Sequence[Sequence[float]], theta: float,
                                max_per_query: int) -> list[list[float]]:
  """Score > theta, IoU 0 to every GT window (after snapping), non-empty, deduplicated, best first."""
  duration = float(record.duration or 0.0)
  spans: list[list[float]] = []
  for st, ed, score in sorted(pred_windows, key=lambda r: r[2], reverse=True):
    if score <= theta:
      break
    s, e = snap_to_grid(st, ed, duration)
    if e <= s or [s, e] in spans:
      continue
    if any(spans_lib.np_temporal_iou_pairwise(np.array([[s, e]]), np.array([g], float))[0, 0] > 0
           for g in record.windows):
      continue
    spans.append([s, e])
    if len(spans) == max_per_query:
      break
  return spans
