"""Boost: 2-fold cross-validated wrong-span mining (the unreleased AMR step, rebuilt from its description).

Train a stage-1-style model on one fold, predict the other: confident predictions (score > theta) with IoU 0 to
every GT window become `wrong_spans`, snapped to the 2 s grid; then the folds swap. See docs/DECISIONS.md.
"""
from __future__ import annotations

import copy
import math
import pathlib
from typing import Sequence

import numpy as np

from amr_jax.data.records import CLIP_LEN_SEC, MomentRecord
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


def iou_1d(a: tuple[float, float], b: tuple[float, float]) -> float:
  inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
  union = (a[1] - a[0]) + (b[1] - b[0]) - inter
  return inter / union if union > 0 else 0.0


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
    if any(iou_1d((s, e), tuple(g)) > 0 for g in record.windows):
      continue
    spans.append([s, e])
    if len(spans) == max_per_query:
      break
  return spans


def mine_wrong_spans(config, workdir: str | pathlib.Path, progress=print) -> tuple[list[MomentRecord], dict]:
  """Runs the 2-fold mining; returns (records with wrong_spans, stats). Fold models go under WORKDIR/fold_k."""
  from amr_jax.data import annotations, features  # pylint: disable=import-outside-toplevel
  from amr_jax.predictor import Predictor  # pylint: disable=import-outside-toplevel
  from amr_jax.train import loop  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  records = loop.load_records(config.data.train_annotations, config.data.subset)
  store = features.FeatureStore(config.data.feature_dir, max_v_l=config.data.max_v_l)
  records = loop.preflight(records, store, config, 'mine')
  folds = split_folds(records, config.seed, config.mine.folds)
  mined: dict[int, list[list[float]]] = {}
  for k, held_out in enumerate(folds):
    train_rows = [r for j, f in enumerate(folds) if j != k for r in f]
    fold_dir = workdir / f'fold_{k}'
    fold_dir.mkdir(exist_ok=True)
    train_path = fold_dir / 'train.jsonl'
    annotations.write_jsonl(train_rows, train_path)
    fold_cfg = copy.deepcopy(config)
    with fold_cfg.unlocked():
      fold_cfg.data.train_annotations = str(train_path)
      fold_cfg.data.val_annotations = ''
      fold_cfg.data.subset = 0
      fold_cfg.seed = config.seed + 1000 * (k + 1)
    progress(f'[mine] fold {k}: training on {len(train_rows)} queries, predicting {len(held_out)}')
    loop.train_and_evaluate(fold_cfg, str(fold_dir))
    predictor = Predictor(fold_dir, which='last', sliding_window=False)
    for row, rec in zip(predictor.predict(held_out, store), held_out):
      mined[rec.qid] = wrong_spans_from_prediction(rec, row['pred_relevant_windows'], config.mine.theta,
                                                   config.mine.max_per_query)
  out = [r.replace(wrong_spans=tuple(tuple(s) for s in mined.get(r.qid, []))) for r in records]
  counts = np.array([len(r.wrong_spans) for r in out])
  stats = {'queries': len(out), 'with_wrong_spans': int((counts > 0).sum()), 'wrong_spans': int(counts.sum()),
           'mean_per_query': float(counts.mean()) if len(counts) else 0.0, 'theta': config.mine.theta}
  return out, stats
