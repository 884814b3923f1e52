"""Boost (amr.md §4): 2-fold cross-validated wrong-span mining, a training run per fold and a predict pass.

`mine_wrong_spans(config, workdir)` is what `launch/mine_wrong_spans.py` calls; the selection rule is amr/mining.py.
"""
from __future__ import annotations

import copy
import pathlib

import numpy as np

from amr_jax.data import annotations
from amr_jax.data.records import MomentRecord
from amr_jax.projects import moment_task
from amr_jax.projects.amr import mining
from amr_jax.train import loop, registry
from amr_jax.train.predictor import Predictor


def mine_wrong_spans(config, workdir: str | pathlib.Path, progress=print) -> tuple[list[MomentRecord], dict]:
  """Runs the 2-fold mining; returns (records with wrong_spans, stats). Fold models go under WORKDIR/fold_k."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  task = registry.make_task(config)
  records, problems = task.load_records(config.data.train_annotations, config.data.subset)
  store = task.open_store(config.data.feature_dir)
  records = moment_task.preflight(records, store, config, 'mine', load_problems=problems)
  folds = mining.split_folds(records, config.seed, config.mine.folds)
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
    data = predictor.task.eval_data_from_records(held_out, store, with_labels=False, what='mine')
    for row, rec in zip(predictor.predict_data(data), held_out):
      mined[rec.qid] = mining.wrong_spans_from_prediction(rec, row['pred_relevant_windows'], config.mine.theta,
                                                   config.mine.max_per_query)
  out = [r.replace(wrong_spans=tuple(tuple(s) for s in mined.get(r.qid, []))) for r in records]
  counts = np.array([len(r.wrong_spans) for r in out])
  stats = {'queries': len(out), 'with_wrong_spans': int((counts > 0).sum()), 'wrong_spans': int(counts.sum()),
           'mean_per_query': float(counts.mean()) if len(counts) else 0.0, 'theta': config.mine.theta}
  return out, stats
