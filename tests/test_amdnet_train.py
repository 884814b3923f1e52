"""AMDNet on the shared trainer: train :tiny on a planted Charades-STA PRVR store, resume after kill -9, export,
predict, the 'prvr' evaluator through launch/evaluate.py, 8 devices = 1 device, and the learning gap.

One real and one shuffled-caption run are shared by the tests (module-scoped); the store is written by the test.
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

from conftest import ANNOTATIONS, ROOT, assert_same_loss_and_grads, loss_and_grads_on
from amr_jax.data import planted_prvr
from amr_jax.data import prvr as prvr_data
from amr_jax.metrics import prvr as prvr_metrics
from amr_jax.metrics import prvr_evaluator
from amr_jax.metrics import registry as eval_registry
from amr_jax.projects.amdnet import model as model_lib
from amr_jax.projects.amdnet import reference
from amr_jax.projects.amdnet import task as task_lib
from amr_jax.train import loop, registry
from amr_jax.train.predictor import Predictor
from amr_jax.workflows import learning_check
from configs import amdnet as amdnet_config

NUM_TRAIN, NUM_VAL = 1500, 500    # first captions of Charades-STA train / test (= PRVR val)
STEPS = 400
# The overrides of both arms, given to train_and_evaluate here and as --config.* flags to launch/train.py.
OVERRIDES = {'data.collection': 'charades', 'train.num_steps': STEPS, 'train.checkpoint_every': 50,
             'train.eval_every': 200, 'train.num_devices': 1}


@pytest.fixture(scope='module')
def store(tmp_path_factory):
  """(data root, train caption file, val caption file) of a planted Charades-STA PRVR store (tiny dims)."""
  root = tmp_path_factory.mktemp('amdnet_store')
  shipped = planted_prvr.dataset_collections('charades', str(ANNOTATIONS))
  collections = {'train': shipped['train'].subset(range(NUM_TRAIN)), 'val': shipped['val'].subset(range(NUM_VAL))}
  planted_prvr.write_planted_prvr(collections, root, 'charades', seed=0, dims='tiny')
  return (root, prvr_data.caption_file_path(root, 'charades', 'train'),
          prvr_data.caption_file_path(root, 'charades', 'val'))


def tiny(store, **overrides):
  root, train, val = store
  return learning_check.tiny_config('amdnet', root, train, val, **{**OVERRIDES, **overrides})


@pytest.fixture(scope='module')
def real_run(store, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('amdnet_real')
  return workdir, loop.train_and_evaluate(tiny(store), str(workdir))


@pytest.fixture(scope='module')
def control_run(store, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('amdnet_control')
  return workdir, loop.train_and_evaluate(tiny(store, **{'data.shuffle_captions': True}), str(workdir))


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------
def test_training_writes_everything(real_run):
  workdir, result = real_run
  assert result['step'] == STEPS and result['step_compiles'] == 1   # fixed padded shapes: one compile
  assert (workdir / 'final_params.sha256').read_text().strip() == result['digest']
  assert (workdir / 'checkpoints').is_dir() and (workdir / 'best').is_dir()
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  evals = [r for r in rows if 'val/SumR' in r]
  assert [r['step'] for r in evals] == [200, 400]
  assert all(r['val/SumR'] == r['val/R1'] + r['val/R5'] + r['val/R10'] + r['val/R100'] for r in evals)
  assert any('loss/clip_nce' in r and 'loss/mask_div' in r and 'loss/rank' in r for r in rows)
  assert {'R1', 'R5', 'R10', 'R100', 'SumR'} <= set(result)
  saved = registry.read_saved(workdir)
  assert saved['task'] == 'amdnet' and saved['dims'] == {'video_dim': 32, 'text_dim': 32}


def test_learning_gap(real_run, control_run, store):
  """Real captions far above the shuffled-caption control, which stays near chance.

  Measured on this store (400 steps): real 110-125 for seeds 1, 2, 3 and the config's 9527, control 63-67, chance
  61.7. The planted codes are zero-mean over each video, and about half of the seeds settle in the mirrored
  solution that reads the code's compensation on the other frames (the argmax clip avoids the planted span); the
  seeds that find the span itself reach ~2x these SumR (amr_jax/workflows/amdnet_chain.py). Both pass this test.
  """
  _, real = real_run
  _, control = control_run
  val = prvr_data.read_caption_file(store[2])
  chance = prvr_metrics.chance_metrics(val.num_videos)['SumR']
  print(f'val {len(val)} captions / {val.num_videos} videos: real SumR {real["SumR"]:.1f} (R1 {real["R1"]:.1f}), '
        f'control {control["SumR"]:.1f} (R1 {control["R1"]:.1f}), chance {chance:.1f}')
  assert real['SumR'] > control['SumR'] + 35 and real['SumR'] > 1.6 * chance, (real, control, chance)
  assert real['R1'] > 2 * max(control['R1'], 1.0), (real, control)
  assert abs(control['SumR'] - chance) < 15, (control, chance)


def _train_cmd(store, workdir):
  root, train, val = store
  flags = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  return [sys.executable, str(ROOT / 'launch' / 'train.py'), '--config=configs/amdnet.py:tiny',
          f'--workdir={workdir}', f'--config.data.feature_dir={root}', f'--config.data.train_annotations={train}',
          f'--config.data.val_annotations={val}', *flags]


def test_kill9_resume_gives_the_same_digest(real_run, store, tmp_path):
  """launch/train.py killed -9 after a mid-run checkpoint, then resumed = the uninterrupted in-process run."""
  _, reference = real_run
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  killed = tmp_path / 'killed'
  proc = subprocess.Popen(_train_cmd(store, killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline:
    ckpts = killed / 'checkpoints'
    if ckpts.exists() and any(p.name.isdigit() and 100 <= int(p.name) < STEPS for p in ckpts.iterdir()):
      break
    if proc.poll() is not None:
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'the run finished before it could be killed; raise STEPS'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / 'final_params.sha256').exists()
  done = subprocess.run(_train_cmd(store, killed), cwd=ROOT, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'resumed from' in done.stdout + done.stderr
  assert (killed / 'final_params.sha256').read_text().strip() == reference['digest']


# ----------------------------------------------------------------------------------------------------
# Prediction, export, evaluation
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def predicted(real_run, store, tmp_path_factory):
  """(predictions of the workdir's best checkpoint, of its export, the out folder)."""
  workdir, _ = real_run
  root, _, val = store
  out = tmp_path_factory.mktemp('amdnet_predict')
  proc = subprocess.run([sys.executable, str(ROOT / 'launch' / 'export.py'), f'--workdir={workdir}',
                         f'--out={out / "export"}'], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  from_workdir = Predictor(workdir, which='best').predict_files(str(val), str(root))
  from_export = Predictor(out / 'export').predict_files(str(val), str(root))
  return from_workdir, from_export, out


def test_export_predicts_exactly_what_the_workdir_does(predicted, store):
  from_workdir, from_export, out = predicted
  val = prvr_data.read_caption_file(store[2])
  assert not (out / 'export' / 'checkpoints').exists() and (out / 'export' / 'params').is_dir()
  assert from_workdir['cap_ids'] == val.cap_ids and from_workdir['vid_ids'] == list(val.video_ids)
  assert from_workdir['scores'].shape == (len(val), val.num_videos) and from_workdir['scores'].dtype == np.float32
  np.testing.assert_array_equal(from_workdir['scores'], from_export['scores'])
  assert np.all(np.abs(from_workdir['scores']) <= 1 + 1e-5)   # cosines


def test_predictions_match_the_unblocked_scores(real_run, store):
  """predict's blocked on-device similarity = the dense max-over-clips cosine of the same encodings."""
  workdir, _ = real_run
  root, _, val = store
  predictor = Predictor(workdir, which='best')
  task = predictor.task
  data = task.eval_data(str(val), str(root), with_labels=False, what='predict')
  tokens, queries = task.encode(predictor.params, data, predictor.run, 64)
  dense = np.asarray(jax.jit(model_lib.score)(queries, tokens))   # the definition, in one piece
  blocked = task.predict(predictor.params, data, predictor.run, 64)['scores']
  np.testing.assert_allclose(blocked, dense, rtol=0, atol=2e-6)


def test_evaluate_cli_on_score_and_ranking_files(predicted, store, real_run, tmp_path):
  from_workdir, _, out = predicted
  _, _, val = store
  workdir, _ = real_run
  task = registry.task_from_saved(workdir)
  scores_path, ranking_path = out / 'val_scores.npz', out / 'val_ranking.jsonl'
  task.write_predictions(from_workdir, str(scores_path))
  task.write_predictions(from_workdir, str(ranking_path))
  collection = prvr_data.read_caption_file(val)
  ground_truth = {'cap_ids': collection.cap_ids, 'video_ids': list(collection.video_ids)}
  direct = eval_registry.get('prvr').evaluate(from_workdir, ground_truth)
  for path in (scores_path, ranking_path):
    metrics_path = tmp_path / f'{path.stem}_metrics.json'
    proc = subprocess.run([sys.executable, str(ROOT / 'launch' / 'evaluate.py'), '--task=prvr',
                           f'--submission={path}', f'--annotations={val}', f'--out={metrics_path}'],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = json.loads(metrics_path.read_text())
    for key in ('R1', 'R5', 'R10', 'R100', 'SumR'):
      assert written[key] == direct[key], (path.name, key)   # float-exact, score file and top-100 ranking alike
    assert json.loads(proc.stdout)['SumR'] == direct['SumR']
  # A broken submission: every problem on its own line, nothing written, exit 1.
  bad = tmp_path / 'bad.npz'
  np.savez(bad, scores=from_workdir['scores'][1:], cap_ids=np.asarray(from_workdir['cap_ids'][1:]),
           vid_ids=np.asarray(['nope'] + from_workdir['vid_ids'][1:]))
  proc = subprocess.run([sys.executable, str(ROOT / 'launch' / 'evaluate.py'), '--task=prvr', f'--submission={bad}',
                         f'--annotations={val}', f'--out={tmp_path / "bad.json"}'], cwd=ROOT, capture_output=True,
                        text=True)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and not (tmp_path / 'bad.json').exists()
  assert any(f'cap_id={from_workdir["cap_ids"][0]}: missing' in line for line in lines), lines
  assert any('vid=nope: unknown video' in line for line in lines) and len(lines) == 3, lines


def test_evaluator_reads_the_shipped_annotation_layouts(predicted, store, tmp_path):
  """The same ground truth from the store's caption file and from the shipped Charades-STA txt rows."""
  from_workdir, _, out = predicted
  _, _, val = store
  shipped = (ANNOTATIONS / 'charades-sta' / 'charades_sta_test.txt').read_text().splitlines()[:NUM_VAL]
  sta = tmp_path / 'charades_sta_test_head.txt'
  sta.write_text('\n'.join(shipped) + '\n')
  assert prvr_evaluator.ground_truth_of_file(sta) == prvr_metrics.read_caption_gt(val)
  scores_path = out / 'val_scores_sta.npz'
  prvr_metrics.write_score_file(scores_path, from_workdir['scores'], from_workdir['cap_ids'], from_workdir['vid_ids'])
  evaluator = prvr_evaluator.PrvrEvaluator()
  assert evaluator.evaluate_files(str(scores_path), str(sta)) == evaluator.evaluate_files(str(scores_path), str(val))
  full = prvr_evaluator.read_collection(ANNOTATIONS / 'charades-sta' / 'charades_sta_train.txt')
  assert (len(full), full.num_videos, full.problems) == (12408, 5338, [])


# ----------------------------------------------------------------------------------------------------
# Devices, data errors, config
# ----------------------------------------------------------------------------------------------------
def test_eight_devices_equal_one_device(store):
  """The task's loss and every gradient on a batch-sharded 8-device mesh = one device (dropout on)."""
  task = registry.make_task(tiny(store))
  data = task.train_data()
  batch = data.batch(0, 3, 8)
  assert batch['caption_mask'].sum() > 8 and batch['caption_mask'].min() == 0   # real variable caption counts
  params, _ = task.init_params(jax.random.key(1), batch)
  rng = jax.random.key(7, impl='rbg')
  one = loss_and_grads_on(1, task, params, batch, rng)
  eight = loss_and_grads_on(8, task, params, batch, rng)
  assert_same_loss_and_grads(one, eight)
  assert one[2]['loss/clip_nce'] > 0 and np.isfinite(one[0])


def test_data_problems_are_named_and_droppable(store, tmp_path):
  root, train, _ = store
  lines = pathlib.Path(train).read_text().splitlines()
  broken = tmp_path / 'charadestrain.caption.txt'
  broken.write_text('\n'.join(lines[:40] + ['NOVIDEO#0 a person who has no features', 'justone'] + lines[40:80])
                    + '\n')
  task = registry.make_task(tiny(store, **{'data.train_annotations': str(broken)}))
  with pytest.raises(task_lib.DataError) as err:
    task.train_data()
  message = str(err.value).split('\n')
  assert message[0].startswith('train: 3 data problem(s)'), message
  assert any(f'{broken}:42: field=line: unparsable line' in m for m in message), message
  assert any('vid=NOVIDEO' in m and 'field=video' in m for m in message), message
  assert any('vid=NOVIDEO cap_id=NOVIDEO#0 field=text' in m for m in message), message
  dropped = registry.make_task(tiny(store, **{'data.train_annotations': str(broken), 'data.drop_bad': True}))
  assert len(dropped.train_data().split.collection) == 80
  with pytest.raises(task_lib.DataError, match='nope.txt: field=file: no such annotation file'):
    registry.make_task(tiny(store, **{'data.train_annotations': str(tmp_path / 'nope.txt')})).train_data()


def test_config_args_and_recipe():
  for arg in ('', 'tiny', 'act', 'cha'):
    config = amdnet_config.get_config(arg)
    assert config.method == 'amdnet' and config.evals.val.type == 'prvr' and config.eval.best_metric == 'val/SumR'
  real = amdnet_config.get_config('')
  assert (real.model.hidden_size, real.model.map_size, real.train.batch_size, real.optim.lr) == (384, 32, 128, 3e-4)
  assert (real.loss.nce_weight, real.seed, real.train.num_epochs) == (0.04, 9527, 200)
  with pytest.raises(ValueError, match='tyny'):
    amdnet_config.get_config('tyny')


def test_reference_metric_cases_for_check_reference():
  """run_check's metric group: the fixture's eval/ cases through gt_ranks, recall_metrics and the evaluator."""
  results = reference.check_eval_metrics(str(ROOT / 'tests' / 'fixtures' / 'amdnet_reference'))
  assert len(results) == 9 and all(r.ok for r in results), [r for r in results if not r.ok]
