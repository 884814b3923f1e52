"""Disk faults in checkpointing: an unwritable or full checkpoint directory stops a run with one line, fast.

Also: kill -9 during async saves still resumes, an existing step is not saved twice, best_mode, no empty best/.
The directory is made unwritable with `chattr +i` (root ignores chmod), else chmod (non-root), else replaced by
a file; "disk full" is a small tmpfs mount (skipped where mounting is not permitted).
"""
import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest

from amr_jax.train.checkpoints import CheckpointError, Checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]


def _state(value: float, n: int = 4) -> dict:
  return {'w': jnp.full((n, n), value, jnp.float32), 'step': jnp.asarray(int(value), jnp.int32)}


def _chattr_works(probe_dir: pathlib.Path) -> bool:
  if shutil.which('chattr') is None:
    return False
  probe = probe_dir / '.chattr_probe'
  probe.mkdir()
  try:
    if subprocess.run(['chattr', '+i', str(probe)], capture_output=True).returncode != 0:
      return False
    try:
      (probe / 'x').mkdir()
      return False
    except OSError:
      return True
  finally:
    subprocess.run(['chattr', '-i', str(probe)], capture_output=True)
    shutil.rmtree(probe, ignore_errors=True)


@contextlib.contextmanager
def unwritable(directory: pathlib.Path):
  """Makes `directory` refuse new entries (chattr +i / chmod / replaced by a file); undone on exit."""
  if os.geteuid() == 0 and _chattr_works(directory.parent):
    subprocess.run(['chattr', '+i', str(directory)], check=True)
    try:
      yield 'chattr'
    finally:
      subprocess.run(['chattr', '-i', str(directory)], check=True)
  elif os.geteuid() != 0:
    mode = directory.stat().st_mode
    directory.chmod(0o555)
    try:
      yield 'chmod'
    finally:
      directory.chmod(mode)
  else:
    moved = directory.with_name(directory.name + '.moved')
    os.rename(directory, moved)
    directory.write_text('not a directory')
    try:
      yield 'file'
    finally:
      directory.unlink()
      os.rename(moved, directory)


@contextlib.contextmanager
def small_tmpfs(size_kb: int):
  if os.geteuid() != 0 or shutil.which('mount') is None:
    pytest.skip('mounting a tmpfs needs root')
  mount_point = pathlib.Path(tempfile.mkdtemp(prefix='ckpt_full_'))
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size_kb}k', 'tmpfs', str(mount_point)],
                        capture_output=True)
  if done.returncode != 0:
    mount_point.rmdir()
    pytest.skip(f'cannot mount a tmpfs here: {done.stderr.decode().strip()}')
  try:
    yield mount_point
  finally:
    subprocess.run(['umount', '-l', str(mount_point)], capture_output=True)
    with contextlib.suppress(OSError):
      mount_point.rmdir()


def test_unwritable_directory_raises_one_line_with_path_and_last_good(tmp_path):
  ckpts = Checkpoints(tmp_path, keep=3, best_metric='')
  assert ckpts.save(2, _state(2), {'step': 2})
  ckpts.wait()
  with unwritable(tmp_path / 'checkpoints'):
    start = time.time()
    with pytest.raises(CheckpointError) as info:
      ckpts.save(4, _state(4), {'step': 4})
      ckpts.wait()
    assert time.time() - start < 30
    with pytest.raises(CheckpointError):    # every later call reports the same failure
      ckpts.save(6, _state(6), {'step': 6})
    ckpts.close()                           # after a reported failure close() neither raises nor hangs
  message = str(info.value)
  assert '\n' not in message
  assert f'saving step 4 to {tmp_path.resolve() / "checkpoints"} failed' in message
  assert f'last good checkpoint: {tmp_path.resolve() / "checkpoints"}/2' in message
  assert not (tmp_path / 'best').exists()   # no best_metric: no empty best/ to mislead the predictor


def test_disk_full_during_the_async_write_is_found_by_check(tmp_path):
  with small_tmpfs(256) as root:
    ckpts = Checkpoints(root / 'run', keep=3, best_metric='')
    ckpts.save(1, _state(1), {'step': 1})
    ckpts.wait()
    start = time.time()
    error = None
    try:
      noise = np.random.default_rng(0).normal(size=(400, 400)).astype(np.float32)   # incompressible
      ckpts.save(2, {'w': jnp.asarray(noise), 'step': jnp.asarray(2, jnp.int32)}, {'step': 2})  # 640 KB > 256 KB
      while time.time() - start < 30:                # the training loop calls check() every few steps
        ckpts.check()
        time.sleep(0.05)
    except CheckpointError as e:
      error = e
    assert error is not None and time.time() - start < 30
    message = str(error)
    assert '\n' not in message and 'saving step 2 to' in message and str(root) in message
    assert message.endswith(f'last good checkpoint: {root.resolve() / "run" / "checkpoints"}/1')
    ckpts.close()


CHILD_TRAINER = textwrap.dedent('''
    """A stand-in training loop: saves every step through Checkpoints, run by launch._cli (one-line errors)."""
    import sys, time
    import jax.numpy as jnp
    import numpy as np
    from launch import _cli
    from amr_jax.train.checkpoints import Checkpoints

    def main(argv):
      ckpts = Checkpoints(argv[1], keep=2, best_metric='')
      rng = np.random.default_rng(0)
      for step in range(1, 10**6):
        noise = rng.normal(size=(64, 64)).astype(np.float32)     # incompressible: fills a disk for real
        ckpts.save(step, {'w': jnp.asarray(noise)}, {'step': step})
        if step % 5 == 0:
          ckpts.check()
        print('saved', step, flush=True)
        time.sleep(0.1)

    if __name__ == '__main__':
      _cli.run(main)
''')


def _fill(directory: pathlib.Path) -> None:
  """Writes zeros into `directory` until its filesystem is full."""
  with open(directory / 'ballast', 'wb') as f:
    with contextlib.suppress(OSError):
      while True:
        f.write(b'\0' * 65536)
        f.flush()


@contextlib.contextmanager
def _workdir_for(fault: str, tmp_path: pathlib.Path):
  if fault == 'disk_full':
    with small_tmpfs(4096) as root:
      yield root / 'run'
  else:
    yield tmp_path / 'run'


@pytest.mark.parametrize('fault', ['unwritable', 'disk_full'])
def test_run_stops_within_30s_with_one_line_no_traceback(tmp_path, fault):
  script = tmp_path / 'trainer.py'
  script.write_text(CHILD_TRAINER)
  with _workdir_for(fault, tmp_path) as workdir:
    child = subprocess.Popen([sys.executable, str(script), str(workdir)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
      while True:
        line = child.stdout.readline()
        assert line, child.stderr.read()
        if line.startswith('saved 3'):
          break
      start = time.time()
      if fault == 'disk_full':
        _fill(workdir)
        _, stderr = child.communicate(timeout=30)
        elapsed = time.time() - start
      else:
        with unwritable(workdir / 'checkpoints'):
          _, stderr = child.communicate(timeout=30)
          elapsed = time.time() - start
    finally:
      if child.poll() is None:
        child.kill()
  assert child.returncode == 1 and elapsed < 30
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert 'Traceback' not in stderr and len(lines) == 1, stderr
  assert lines[0].startswith('error: CheckpointError: saving step ')
  assert str(workdir / 'checkpoints') in lines[0] and 'last good checkpoint: ' in lines[0]
  good = int(lines[0].rsplit('/', 1)[1])
  assert good >= 2


KILLED_SAVER = textwrap.dedent('''
    import sys
    import jax.numpy as jnp
    from amr_jax.train.checkpoints import Checkpoints
    ckpts = Checkpoints(sys.argv[1], keep=3, best_metric='')
    for step in range(1, 10**6):
      ckpts.save(step, {'w': jnp.full((256, 256), step, jnp.float32)}, {'step': step})
      print('saving', step, flush=True)
''')


def test_kill9_during_async_saves_still_resumes(tmp_path):
  script = tmp_path / 'saver.py'
  script.write_text(KILLED_SAVER)
  workdir = tmp_path / 'run'
  child = subprocess.Popen([sys.executable, str(script), str(workdir)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=REPO)
  try:
    for line in child.stdout:
      if line.startswith('saving 4'):
        break
    child.send_signal(signal.SIGKILL)     # most likely in the middle of writing a step
  finally:
    child.wait(timeout=30)
  ckpts = Checkpoints(workdir, keep=3, best_metric='')
  step = ckpts.latest_step()
  assert step is not None and step >= 3
  abstract = {'w': jnp.zeros((256, 256), jnp.float32)}
  state, meta, restored = ckpts.restore(abstract)
  assert restored == step and meta == {'step': step}
  np.testing.assert_array_equal(np.asarray(state['w']), np.full((256, 256), step, np.float32))
  assert ckpts.save(step + 1, state, {'step': step + 1})   # the unfinished step's temp dir does not block
  ckpts.close()
  assert not [p for p in os.listdir(workdir / 'checkpoints') if 'tmp' in p]


def test_existing_step_is_not_saved_twice(tmp_path):
  ckpts = Checkpoints(tmp_path, best_metric='val/mAP')
  assert ckpts.save(5, _state(5), {'step': 5})
  assert ckpts.save_best(5, _state(5), {'step': 5, 'val/mAP': 0.3})
  ckpts.close()
  again = Checkpoints(tmp_path, best_metric='val/mAP')   # a resumed run reaching its final step again
  assert not again.save(5, _state(5), {'step': 5}, force=True)
  assert not again.save_best(5, _state(5), {'step': 5, 'val/mAP': 0.9})
  again.close()


def test_best_mode_min_keeps_the_lowest(tmp_path):
  ckpts = Checkpoints(tmp_path, best_metric='val/loss', best_mode='min')
  assert ckpts.save_best(1, _state(1), {'step': 1, 'val/loss': 3.0})
  assert ckpts.save_best(2, _state(2), {'step': 2, 'val/loss': 2.0})
  assert not ckpts.save_best(3, _state(3), {'step': 3, 'val/loss': 4.0})
  assert ckpts.best_meta()['val/loss'] == 2.0
  state, _, step = ckpts.restore(_state(0), which='best')
  assert step == 2 and float(state['w'][0, 0]) == 2.0
  ckpts.close()
  with pytest.raises(ValueError, match='best_mode'):
    Checkpoints(tmp_path, best_mode='lowest')


def test_restore_without_checkpoint_is_one_line(tmp_path):
  ckpts = Checkpoints(tmp_path, best_metric='')
  with pytest.raises(CheckpointError, match=r'no checkpoint to restore under .*checkpoints$'):
    ckpts.restore(_state(0))
  ckpts.close()
