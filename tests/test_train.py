"""Training loop: stage 1 -> stage 2 on a planted store, frozen teacher, NaN safety, kill -9 resume digest.

Runs the real launch scripts where the contract is a command (train.py), the library elsewhere.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from amr_jax.train import loop, registry


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope='module')
def stage1_run(planted_qvh, tmp_path_factory):
  store, train, val = planted_qvh
  workdir = tmp_path_factory.mktemp('stage1')
  cfg = tiny_config('amr_stage1', store, train, val, **{'train.num_steps': 12, 'train.checkpoint_every': 6,
                                                         'train.eval_every': 6, 'data.aug_passes': 1})
  result = loop.train_and_evaluate(cfg, str(workdir))
  return workdir, result


def test_stage1_writes_everything(stage1_run):
  workdir, result = stage1_run
  assert result['step'] == 12
  assert (workdir / 'final_params.sha256').read_text().strip() == result['digest']
  assert (workdir / 'checkpoints').is_dir() and (workdir / 'best').is_dir()
  lines = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert any('loss' in l for l in lines) and any('val/MR-full-mAP' in l for l in lines)
  assert list((workdir / 'tb').iterdir())
  assert 'MR-full-mAP' in result
  assert result['step_compiles'] == 1  # no recompilation after the first step


def test_stage2_teacher_is_frozen_and_student_moves(stage1_run, planted_qvh, tmp_path):
  store, train, val = planted_qvh
  stage1_dir, _ = stage1_run
  cfg = tiny_config('amr_stage2', store, train, None, **{'train.num_steps': 4, 'train.checkpoint_every': 2,
                                                         'init.stage1_workdir': str(stage1_dir)})
  loop.train_and_evaluate(cfg, str(tmp_path))
  from amr_jax.train import checkpoints
  state, _, step = checkpoints.restore_params_only(tmp_path / 'checkpoints')
  assert step == 4
  stage1 = _flat(registry.load_trained_params(str(stage1_dir)))
  teacher = _flat(state['frozen_params'])
  student = _flat(state['params'])
  # Teacher: bit-identical to stage 1 for every shared tensor, never touched by the optimiser.
  for key, value in stage1.items():
    np.testing.assert_array_equal(teacher[key], value, err_msg=key)
  # Student: started from the same stage-1 tensors and has moved.
  moved = [k for k, v in stage1.items() if 'txt_position_embed' not in k and not np.array_equal(student[k], v)]
  assert len(moved) > len(stage1) // 2
  # Active FFN exists in the student.
  assert any('_active' in k for k in student)


def test_nan_step_is_skipped_and_never_checkpointed(planted_qvh, tmp_path):
  store, train, _ = planted_qvh
  cfg = tiny_config('amr_stage1', store, train, None, **{
      'train.num_steps': 6, 'train.checkpoint_every': 2, 'train.inject_nan_at_step': 3, 'data.aug_passes': 1})
  result = loop.train_and_evaluate(cfg, str(tmp_path))
  assert result['step'] == 6
  from amr_jax.train import checkpoints
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert 4 not in saved  # step 4 was the poisoned one: never checkpointed right after a skipped update
  assert saved and saved[-1] == 6
  for step in saved:
    state, _, _ = checkpoints.restore_params_only(tmp_path / 'checkpoints', step)
    for leaf in jax.tree.leaves(state['params']):
      assert np.all(np.isfinite(leaf))
  # A streak of non-finite steps stops the run and points at the last good checkpoint.
  cfg2 = tiny_config('amr_stage1', store, train, None, **{
      'train.num_steps': 8, 'train.checkpoint_every': 2, 'train.inject_nan_at_step': 5,
      'train.max_bad_steps': 1, 'data.aug_passes': 1})
  with pytest.raises(loop.TrainingError, match='last good checkpoint: .*checkpoints/4'):
    loop.train_and_evaluate(cfg2, str(tmp_path / 'streak'))


def _train_cmd(store, train, workdir, steps):
  return [sys.executable, str(ROOT / 'launch' / 'train.py'), '--config=configs/amr_stage1.py:tiny',
          f'--workdir={workdir}', f'--config.data.feature_dir={store}', f'--config.data.train_annotations={train}',
          '--config.data.val_annotations=', f'--config.train.num_steps={steps}',
          '--config.train.checkpoint_every=5', '--config.data.aug_passes=1']


def test_kill9_resume_gives_the_same_digest(planted_qvh, tmp_path):
  store, train, _ = planted_qvh
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  steps = 30
  ref = tmp_path / 'uninterrupted'
  subprocess.run(_train_cmd(store, train, ref, steps), cwd=ROOT, env=env, check=True, capture_output=True)
  killed = tmp_path / 'killed'
  proc = subprocess.Popen(_train_cmd(store, train, killed, steps), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline:  # kill -9 once a mid-run checkpoint is committed
    ckpts = killed / 'checkpoints'
    if ckpts.exists() and any(p.name.isdigit() and int(p.name) >= 10 for p in ckpts.iterdir()):
      break
    if proc.poll() is not None:
      break
    time.sleep(0.2)
  assert proc.poll() is None, 'the run finished before it could be killed; raise num_steps'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / 'final_params.sha256').exists()
  subprocess.run(_train_cmd(store, train, killed, steps), cwd=ROOT, env=env, check=True, capture_output=True)
  assert (killed / 'final_params.sha256').read_text() == (ref / 'final_params.sha256').read_text()


def test_export_predicts_exactly_what_the_workdir_does(stage1_run, planted_qvh, tmp_path):
  store_dir, _, val = planted_qvh
  workdir, _ = stage1_run
  from amr_jax.data import annotations, features
  from amr_jax.train.predictor import Predictor
  out = tmp_path / 'export'
  proc = subprocess.run([sys.executable, str(ROOT / 'launch' / 'export.py'), f'--workdir={workdir}', f'--out={out}'],
                        cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert not (out / 'checkpoints').exists() and (out / 'params').is_dir()
  records = annotations.load_annotations(val)[:8]
  store = features.FeatureStore(str(store_dir))
  from_workdir, from_export = (
      p.predict_data(p.task.eval_data_from_records(records, store, with_labels=False))
      for p in (Predictor(workdir, which='best'), Predictor(out)))
  assert from_workdir == from_export
  for row, rec in zip(from_export, records):
    assert row['qid'] == rec.qid and len(row['pred_relevant_windows']) == 10
    assert all(0 <= st <= ed <= 150 for st, ed, _ in row['pred_relevant_windows'])
