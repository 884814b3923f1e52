"""Evaluators chosen by config and the generic inference path, on the real MR methods (AMR and FlashMMR).

A Charades-evaluated run logs its scalars and moves best/; predict -> export -> predict-from-export is identical.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_config


def _evals(workdir):
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [r for r in rows if any(k.startswith('val/') for k in r)]


def test_charades_evaluated_run_logs_scalars_and_moves_best(planted_qvh, tmp_path):
  from amr_jax.train import loop
  store, train, val = planted_qvh
  metric = 'val/standard/R1@0.3'
  config = tiny_config('amr_stage1', store, train, val, **{
      'train.num_steps': 24, 'train.checkpoint_every': 6, 'train.eval_every': 6, 'train.batch_size': 8,
      'evals': {'val': {'type': 'charades'}}, 'eval.best_metric': metric})
  result = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  evals = _evals(tmp_path / 'run')
  assert [r['step'] for r in evals] == [6, 12, 18, 24]
  assert all(metric in r and 'val/moment_detr/MR-full-mAP' in r for r in evals)
  assert result['evals'][metric] == evals[-1][metric]
  best_step = max(evals, key=lambda r: (r[metric], -r['step']))['step']   # ties keep the earlier best
  saved = [int(p.name) for p in (tmp_path / 'run' / 'best').iterdir() if p.name.isdigit()]
  assert saved == [best_step]


def test_a_best_metric_no_evaluator_reports_is_one_line(planted_qvh, tmp_path):
  from amr_jax.train import loop
  store, train, val = planted_qvh
  config = tiny_config('amr_stage1', store, train, val, **{
      'train.num_steps': 2, 'train.checkpoint_every': 2, 'eval.best_metric': 'val/no-such-metric'})
  with pytest.raises(loop.TrainingError, match='val/no-such-metric.*val/MR-full-mAP'):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))


def _predict(source, annotations, store, out, env):
  proc = subprocess.run([sys.executable, 'launch/predict.py', f'--workdir={source}', f'--annotations={annotations}',
                         f'--features={store}', f'--out={out}'], cwd=ROOT, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out.read_text()


@pytest.mark.parametrize('module', ['amr_stage1', 'flashmmr'])
def test_predict_export_predict_is_identical_and_needs_no_training_files(module, planted_qvh, tmp_path):
  from amr_jax.train import loop
  store, train, val = planted_qvh
  # The run's own copies of its annotation files, removed before the export is used.
  data = tmp_path / 'data'
  data.mkdir()
  shutil.copy(train, data / 'train.jsonl')
  shutil.copy(val, data / 'val.jsonl')
  config = tiny_config(module, store, data / 'train.jsonl', data / 'val.jsonl', **{
      'train.num_steps': 4, 'train.checkpoint_every': 4, 'train.batch_size': 8})
  loop.train_and_evaluate(config, str(tmp_path / 'run'))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  query_file = tmp_path / 'queries.jsonl'
  # Predicting needs no labels: only qid, vid, query (and duration) per row.
  rows = [json.loads(line) for line in open(val, encoding='utf-8')][:12]
  query_file.write_text(''.join(json.dumps({k: r[k] for k in ('qid', 'vid', 'query', 'duration')}) + '\n'
                                for r in rows))
  first = _predict(tmp_path / 'run', query_file, store, tmp_path / 'from_run.jsonl', env)
  proc = subprocess.run([sys.executable, 'launch/export.py', f'--workdir={tmp_path / "run"}',
                         f'--out={tmp_path / "export"}'], cwd=ROOT, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  shutil.rmtree(data)
  shutil.rmtree(tmp_path / 'run')
  second = _predict(tmp_path / 'export', query_file, store, tmp_path / 'from_export.jsonl', env)
  assert first == second and len(first.splitlines()) == 12
  assert all(len(json.loads(line)['pred_relevant_windows']) for line in first.splitlines())


def test_sliding_window_predict_covers_a_long_video(planted_qvh, tmp_path):
  """A 3 x max_v_l video through the task's generic predict: chunks merged, windows in range, every clip scored.

  Untrained parameters, so this checks the plumbing (chunking, offsets, NMS merge, saliency average) in seconds;
  tests/test_learning.py checks that a trained model finds a moment in the last third.
  """
  import jax
  import numpy as np
  from amr_jax.data import features, planted
  from amr_jax.data.records import MomentRecord
  from amr_jax.train import inference, registry, sharding
  store, train, val = planted_qvh
  config = tiny_config('amr_stage1', store, train, val)
  task = registry.make_task(config)
  lv, clip_len = config.data.max_v_l, config.data.clip_len
  num_clips = 3 * lv
  duration = num_clips * clip_len
  records = [MomentRecord(qid=900000 + i, vid=f'long_{i}', query='a person opens a door', duration=duration,
                          windows=((duration - 40.0, duration - 20.0),),
                          relevant_clip_ids=tuple(range(num_clips - 20, num_clips - 10)),
                          saliency_scores=tuple((4, 4, 4) for _ in range(10))) for i in range(3)]
  planted.write_planted_store(records, str(tmp_path / 'long'), seed=0, dims='tiny', max_v_l=num_clips)
  long_store = features.FeatureStore(str(tmp_path / 'long'), max_v_l=num_clips)
  data = task.eval_data_from_records(records, long_store, with_labels=False)
  assert data.chunks(num_clips)[-1] == (num_clips - lv, num_clips)
  params, _ = task.init_params(jax.random.PRNGKey(0), next(data.batches(2)))
  rows = task.predict(params, data, inference.make_runner(sharding.make_mesh(1)), batch_size=4)
  assert [r['qid'] for r in rows] == [r.qid for r in records]
  for row in rows:
    windows = np.array([w[:2] for w in row['pred_relevant_windows']])
    assert 0 < len(windows) <= config.model.num_queries
    assert windows.min() >= 0 and windows.max() <= duration and np.all(windows[:, 1] > windows[:, 0])
    assert len(row['pred_saliency_scores']) == num_clips
