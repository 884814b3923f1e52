"""CPL through launch/train.py on a planted Charades-STA store: a run killed -9 after a mid-run checkpoint and then
resumed ends with the same final_params.sha256 as an uninterrupted run.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from amr_jax.workflows import weak_chain

STEPS = 240
CHECKPOINT_EVERY = 20
# Small CPL (the tiny recipe with a narrower network) so the three launches stay within a few minutes on 2 cores.
OVERRIDES = {'model.hidden_size': 16, 'model.num_layers1': 1, 'model.num_layers2': 1, 'train.num_steps': STEPS,
             'train.checkpoint_every': CHECKPOINT_EVERY, 'train.eval_every': 0, 'train.log_every': 20,
             'train.batch_size': 8, 'train.num_devices': 1, 'eval.batch_size': 16}


@pytest.fixture(scope='module')
def store(tmp_path_factory):
  return weak_chain.build_store(tmp_path_factory.mktemp('weak_resume_store'), 80, 24)


def _train_cmd(store, workdir):
  flags = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  return [sys.executable, str(ROOT / 'launch' / 'train.py'), '--config=configs/cpl.py:tiny', f'--workdir={workdir}',
          f'--config.data.train_annotations={store["train"]}', f'--config.data.val_annotations={store["val"]}',
          f'--config.data.feature_dir={store["features"]}', *flags]


@pytest.fixture(scope='module')
def uninterrupted(store, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('cpl_uninterrupted')
  done = subprocess.run(_train_cmd(store, workdir), cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return (workdir / 'final_params.sha256').read_text().strip()


def _mid_run_checkpoint(workdir) -> bool:
  ckpts = workdir / 'checkpoints'
  return ckpts.exists() and any(p.name.isdigit() and 2 * CHECKPOINT_EVERY <= int(p.name) < STEPS
                                for p in ckpts.iterdir())


def test_cpl_kill9_resume_gives_the_same_digest(uninterrupted, store, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  killed = tmp_path / 'killed'
  proc = subprocess.Popen(_train_cmd(store, killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None and not _mid_run_checkpoint(killed):
    time.sleep(0.05)
  assert proc.poll() is None, 'the run finished before it could be killed; raise STEPS'
  assert _mid_run_checkpoint(killed), 'no mid-run checkpoint within the deadline'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / 'final_params.sha256').exists()
  done = subprocess.run(_train_cmd(store, killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'resumed from' in done.stdout + done.stderr
  assert (killed / 'final_params.sha256').read_text().strip() == uninterrupted
