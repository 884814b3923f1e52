"""The weak-MR chain (CPL / MCMT) on the embedded default, a planted Charades-STA store, with its control.

planted store -> validate -> train (real queries) -> train (shuffled-query control) -> predict -> evaluate.
"""
from __future__ import annotations

import importlib
import json
import pathlib
import time
from typing import Optional

import ml_collections

from amr_jax.data import planted_weak
from amr_jax.data import weak_mr
from amr_jax.metrics import weak_mr as weak_metrics
from amr_jax.train import loop
from amr_jax.train import registry
from amr_jax.train.inference import make_runner
from amr_jax.train import sharding

PHASES = 6
ANNOTATIONS = pathlib.Path(__file__).resolve().parents[2] / 'data' / 'annotations' / 'charades-sta'
REPORTED = ('R1@0.3', 'R1@0.5', 'R1@0.7', 'R1_mIoU')


def build_store(root, num_train: int, num_val: int, *, frame_dim: int = 40, word_dim: int = 24,
                seed: int = 0) -> dict:
  """The first `num_train` / `num_val` Charades-STA train / test queries (jsonl: with durations) as a planted
  weak-MR store under `root`; returns the paths a config needs."""
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  train = weak_mr.load_weak_annotations(ANNOTATIONS / 'charades_train_release.jsonl')[:num_train]
  test = weak_mr.load_weak_annotations(ANNOTATIONS / 'charades_test_release.jsonl', qid_offset=10**6)[:num_val]
  summary = planted_weak.write_planted_weak_store(train + test, str(root / 'store'), seed=seed,
                                                  frame_dim=frame_dim, word_dim=word_dim)
  paths = {'train': str(root / 'train.jsonl'), 'val': str(root / 'val.jsonl'), 'features': summary.feature_path,
           'query_map': summary.shuffled_path}
  for name, records in (('train', train), ('val', test)):
    with open(paths[name], 'w', encoding='utf-8') as f:
      for r in records:
        f.write(json.dumps({'qid': r.qid, 'vid': r.vid, 'query': r.query, 'duration': r.duration,
                            'relevant_windows': [list(w) for w in r.windows]}) + '\n')
  return paths


def with_trainer_keys(config: ml_collections.ConfigDict, tiny: bool = True) -> ml_collections.ConfigDict:
  """Adds the trainer keys configs/cpl.py lacks (common.trainer_config), keeping every value it sets."""
  common = importlib.import_module('configs.common')
  base = common.trainer_config(tiny, method=config.method, evals={'val': {'type': 'weak_mr'}},
                               best_metric='val/R1@0.5')
  config = ml_collections.ConfigDict(config.to_dict())
  for section in ('train', 'eval', 'init'):
    if section not in config:
      config[section] = base[section]
      continue
    for key, value in base[section].items():
      if key not in config[section]:
        config[section][key] = value
  if 'evals' not in config or not config.evals:
    config.evals = base.evals
  return config


def tiny_run_config(method: str, paths: dict, *, control: bool = False, seed: int = 0, **overrides):
  """configs/<method>.py:tiny + trainer keys, pointed at a planted store (`build_store`); overrides 'a.b': v."""
  config = importlib.import_module(f'configs.{method}').get_config('tiny')
  config = with_trainer_keys(config)
  config.seed = seed
  config.data.train_annotations = paths['train']
  config.data.val_annotations = paths['val']
  config.data.feature_dir = paths['features']
  config.data.frame_dim = None
  if 'query_map' not in config.data:
    config.data.query_map = ''
  if control:
    config.data.query_map = paths['query_map']
  for key, value in overrides.items():
    section, _, name = key.partition('.')
    if name not in config[section]:
      with config.unlocked():
        config[section][name] = value
    config[section][name] = value
  return config


class _Phases:
  """Prints 'phase k/N: what' and the seconds each phase took."""

  def __init__(self, total: int):
    self.total, self.k, self.name, self.t = total, 0, '', time.time()
    self.seconds: dict = {}

  def start(self, text: str) -> None:
    self.end()
    self.k, self.name, self.t = self.k + 1, text.split(':')[0], time.time()
    print(f'\n== phase {self.k}/{self.total}: {text}', flush=True)

  def end(self) -> None:
    if self.k and self.name not in self.seconds:
      self.seconds[self.name] = round(time.time() - self.t, 1)
      print(f'   phase {self.k}/{self.total} ({self.name}) done in {self.seconds[self.name]:.0f} s', flush=True)


def run(workdir, method: str = 'mcmt', *, num_train: int = 600, num_val: int = 150, num_steps: Optional[int] = None,
        seed: int = 0, eval_every: Optional[int] = None) -> dict:
  """The whole chain in `workdir`; returns {'real': scalars, 'control': scalars, 'seconds': per phase}."""
  if method not in ('cpl', 'mcmt'):
    raise ValueError(f"method must be 'cpl' or 'mcmt', got {method!r}")
  workdir = pathlib.Path(workdir)
  phases = _Phases(PHASES)
  phases.start(f'planted store: {num_train} train + {num_val} test Charades-STA queries')
  paths = build_store(workdir / 'data', num_train, num_val, seed=seed)
  overrides = {} if num_steps is None else {'train.num_steps': int(num_steps)}
  if eval_every is not None:   # 0 = only at the end (a full-size val split is costly to score often)
    overrides['train.eval_every'] = int(eval_every)
  config = tiny_run_config(method, paths, seed=seed, **overrides)
  phases.start('validate: every problem of both splits in one pass')
  task = registry.make_task(config)
  task.train_data()
  task.eval_data(paths['val'], paths['features'])
  print(f'   ok: vocabulary of {task.dims["vocab_size"] - 1} words, frame_dim {task.dims["frame_dim"]}', flush=True)
  phases.start(f'train {method} on the real queries')
  real = loop.train_and_evaluate(config, str(workdir / 'real'))
  phases.start(f'train {method} on shuffled queries (control)')
  control = loop.train_and_evaluate(tiny_run_config(method, paths, control=True, seed=seed, **overrides),
                                    str(workdir / 'control'))
  phases.start('predict from the trained run')
  trained = registry.task_from_saved(workdir / 'real')
  params = registry.load_trained_params(str(workdir / 'real'))
  data = trained.eval_data(paths['val'], paths['features'])
  rows = trained.predict(params, data, make_runner(sharding.make_mesh(0)), 32)
  trained.write_predictions(rows, str(workdir / 'predictions.jsonl'))
  phases.start('evaluate the prediction file')
  evaluator = weak_metrics.WeakMREvaluator()
  scores = evaluator.scalars(evaluator.evaluate_files(str(workdir / 'predictions.jsonl'), paths['val']))
  phases.end()
  print(f'\n{"":10s}' + ''.join(f'{k:>10s}' for k in REPORTED))
  for name, result in (('real', real), ('control', control), ('file', scores)):
    print(f'{name:10s}' + ''.join(f'{100 * result.get(k, float("nan")):10.2f}' for k in REPORTED))
  return {'real': {k: real[k] for k in REPORTED}, 'control': {k: control[k] for k in REPORTED},
          'file': scores, 'seconds': phases.seconds}


def compare(workdir, methods=('cpl', 'mcmt'), seeds=(0, 1, 2), *, num_train: int = 600, num_val: int = 150,
            num_steps: Optional[int] = None, eval_every: Optional[int] = None) -> list:
  """`run` for every (method, seed) under `workdir`/<method>_seed<seed>; one row per run (docs/PLANTED.md)."""
  rows = []
  for method in methods:
    for seed in seeds:
      result = run(pathlib.Path(workdir) / f'{method}_seed{seed}', method, num_train=num_train, num_val=num_val,
                   num_steps=num_steps, seed=seed, eval_every=eval_every)
      rows.append({'method': method, 'seed': seed, 'real': result['real'], 'control': result['control'],
                   'seconds': sum(result['seconds'].values())})
  return rows


def table(rows: list) -> str:
  """Mean and [min, max] over seeds of each method's real and control arms, in percent."""
  lines = [f'{"method":8s}{"arm":9s}{"seeds":>6s}' + ''.join(f'{k:>22s}' for k in REPORTED)]
  for method in dict.fromkeys(r['method'] for r in rows):
    mine = [r for r in rows if r['method'] == method]
    for arm in ('real', 'control'):
      cells = []
      for key in REPORTED:
        values = [100 * r[arm][key] for r in mine]
        cells.append(f'{sum(values) / len(values):6.1f} [{min(values):5.1f},{max(values):5.1f}]')
      lines.append(f'{method:8s}{arm:9s}{len(mine):6d}' + ''.join(f'{c:>22s}' for c in cells))
  return '\n'.join(lines)
