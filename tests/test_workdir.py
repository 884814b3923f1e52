"""Tests of the workdir lifecycle: the lock (live holder refused, kill -9 taken over), accept(), the run record.

Child processes hold the lock so "another live trainer" and "a trainer killed with SIGKILL" are real processes.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from amr_jax.train import workdir as wd
from amr_jax.train.workdir import RunLock, RunRecord, WorkdirError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLDER = textwrap.dedent('''
    import sys, time
    from amr_jax.train import workdir as wd
    lock = wd.RunLock(sys.argv[1]).acquire()
    if len(sys.argv) > 2:   # also open an attempt, as the trainer does after accept()
      record = wd.RunRecord(sys.argv[1])
      decision = wd.accept(sys.argv[1], {'train': {'num_steps': 6}}, {'video_dim': 4})
      attempt = record.attempt({'run': {'train': {'num_steps': 6}}, 'dims': {'video_dim': 4}}, decision)
      attempt.__enter__()
    print('locked', flush=True)
    time.sleep(120)
''')


def _config(**train):
  train = dict({'num_steps': 6, 'log_every': 2, 'checkpoint_every': 2}, **train)
  return {'model': {'hidden_dim': 64}, 'optim': {'lr': 1e-3}, 'train': train, 'data': {'paths': ['a', 'b']}}


def _payload(config=None, dims=None):
  return {'run': config or _config(), 'dims': dims or {'video_dim': 48, 'text_dim': 32}, 'task': 'amr'}


def _holder(tmp_path, workdir, attempt=False):
  script = tmp_path / 'holder.py'
  script.write_text(HOLDER)
  args = [sys.executable, str(script), str(workdir)] + (['attempt'] if attempt else [])
  child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
  line = child.stdout.readline()
  assert line.strip() == 'locked', child.stderr.read()
  return child


def _finish(workdir, config=None, dims=None, step=6, digest='ab' * 32):
  """A finished run, recorded as the trainer records one."""
  record = RunRecord(workdir)
  decision = wd.accept(workdir, (config or _config()), dims or {'video_dim': 48, 'text_dim': 32})
  with record.attempt(_payload(config, dims), decision, argv=['train.py', '--workdir', str(workdir)]):
    (workdir / 'checkpoints' / str(step)).mkdir(parents=True)
    record.mark_finished(step, digest)
  return record


# ----------------------------------------------------------------------------------------------------
# The lock
# ----------------------------------------------------------------------------------------------------
def test_second_live_process_is_refused_and_sigkill_leaves_a_stale_lock(tmp_path):
  workdir = tmp_path / 'run'
  child = _holder(tmp_path, workdir)
  try:
    with pytest.raises(WorkdirError) as info:
      RunLock(workdir).acquire()
    message = str(info.value)
    assert '\n' not in message
    assert f'{workdir} is being trained by pid {child.pid} on {socket.gethostname()} since ' in message
  finally:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
  # kill -9: the lock file stays, the flock is gone -> taken over with a one-line notice.
  assert (workdir / wd.LOCK_FILE).exists()
  notices = []
  with RunLock(workdir, notice=notices.append) as lock:
    assert lock.stale['pid'] == child.pid
    assert len(notices) == 1 and 'no longer running; taking it over' in notices[0]
    assert f'pid {child.pid}' in notices[0]
    held = json.loads((workdir / wd.LOCK_FILE).read_text())
    assert held['pid'] == os.getpid() and held['host'] == socket.gethostname() and held['started']
    with pytest.raises(WorkdirError, match=f'being trained by pid {os.getpid()}'):
      RunLock(workdir).acquire()          # a second holder in this process is refused too
  assert not (workdir / wd.LOCK_FILE).exists()


def test_lock_is_released_on_exceptions(tmp_path):
  with pytest.raises(KeyError):
    with RunLock(tmp_path):
      raise KeyError('boom')
  assert not (tmp_path / wd.LOCK_FILE).exists()
  notices = []
  with RunLock(tmp_path, notice=notices.append):
    pass
  assert notices == []          # a cleanly released lock is not "stale"


def test_damaged_lock_file_without_holder_is_taken_over(tmp_path):
  (tmp_path / wd.LOCK_FILE).write_text('not json')
  notices = []
  with RunLock(tmp_path, notice=notices.append):
    pass
  assert len(notices) == 1 and 'taking it over' in notices[0]


# ----------------------------------------------------------------------------------------------------
# accept()
# ----------------------------------------------------------------------------------------------------
def test_fresh_then_finished_exits_with_the_step(tmp_path):
  assert wd.accept(tmp_path, _config(), None).kind == 'fresh'
  _finish(tmp_path)
  decision = wd.accept(tmp_path, _config(), None)
  assert decision.kind == 'finished' and decision.step == 6 and decision.digest == 'ab' * 32
  assert 'already finished at step 6' in decision.message and '\n' not in decision.message
  # Cadence keys may differ; the decision says so.
  decision = wd.accept(tmp_path, _config(log_every=3, checkpoint_every=3), {'video_dim': 48, 'text_dim': 32})
  assert decision.kind == 'finished' and decision.changed == ('train.checkpoint_every 2 -> 3',
                                                              'train.log_every 2 -> 3')


def test_changed_recipe_or_dims_is_refused_naming_the_keys_and_record_is_untouched(tmp_path):
  _finish(tmp_path)
  before = (tmp_path / wd.CONFIG_FILE).read_bytes()
  changed = _config()
  changed['model']['hidden_dim'] = 32
  changed['optim']['lr'] = 2e-3
  with pytest.raises(WorkdirError) as info:
    wd.accept(tmp_path, changed, None, argv=['train.py', 'changed'])
  message = str(info.value)
  assert '\n' not in message
  assert 'model.hidden_dim 64 -> 32' in message and 'optim.lr 0.001 -> 0.002' in message
  assert wd.OVERWRITE_FLAG in message and 'holds a finished run (step 6)' in message
  with pytest.raises(WorkdirError, match=r'dims.video_dim 48 -> 52'):
    wd.accept(tmp_path, _config(), {'video_dim': 52, 'text_dim': 32})
  with pytest.raises(WorkdirError, match=r'train.num_steps 6 -> 4'):
    wd.accept(tmp_path, _config(num_steps=4), None)      # shorter: not an extension
  with pytest.raises(WorkdirError, match=r"data.paths \["):
    wd.accept(tmp_path, dict(_config(), data={'paths': ['a']}), None)
  assert (tmp_path / wd.CONFIG_FILE).read_bytes() == before
  # The refusal is an attempt too: logged with its config.
  lines = [json.loads(l) for l in (tmp_path / wd.ATTEMPTS_FILE).read_text().splitlines()]
  assert lines[-1]['argv'] == ['train.py', 'changed'] and lines[-1]['outcome'].startswith('refused: ')
  assert lines[-1]['config']['model']['hidden_dim'] == 32
  # A finished record is never replaced.
  with pytest.raises(WorkdirError, match='holds a finished run'):
    RunRecord(tmp_path).write_config(_payload(changed))
  assert (tmp_path / wd.CONFIG_FILE).read_bytes() == before


def test_config_dicts_compare_like_their_stored_json(tmp_path):
  import ml_collections  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(_config())
  config.train.windows = (1, 2)           # tuples come back from JSON as lists
  decision = wd.accept(tmp_path, config, {'video_dim': 48})
  with RunRecord(tmp_path).attempt({'run': config, 'dims': {'video_dim': 48}}, decision):
    pass
  assert wd.read_run_config(tmp_path)['run']['train']['windows'] == [1, 2]
  assert wd.accept(tmp_path, config, {'video_dim': 48}).kind == 'resume'


def test_extension_of_a_finished_run_resumes(tmp_path):
  _finish(tmp_path)
  decision = wd.accept(tmp_path, _config(num_steps=10), {'video_dim': 48, 'text_dim': 32})
  assert decision.kind == 'resume' and decision.step == 6
  assert decision.changed == ('train.num_steps 6 -> 10',)
  assert 'extending the finished run from step 6' in decision.message
  record = RunRecord(tmp_path)
  with record.attempt(_payload(_config(num_steps=10)), decision):
    assert record.status()['status'] == 'running'
    record.mark_finished(10, 'cd' * 32)
  assert json.loads((tmp_path / wd.CONFIG_FILE).read_text())['run']['train']['num_steps'] == 10
  assert wd.accept(tmp_path, _config(num_steps=10), None).step == 10


def test_running_run_resumes_from_its_newest_checkpoint(tmp_path):
  record = RunRecord(tmp_path)
  decision = wd.accept(tmp_path, _config(), {'video_dim': 48, 'text_dim': 32})
  with pytest.raises(RuntimeError, match='boom'):
    with record.attempt(_payload(), decision, argv=['a']):
      (tmp_path / 'checkpoints' / '2').mkdir(parents=True)
      (tmp_path / 'checkpoints' / '4').mkdir()
      (tmp_path / 'checkpoints' / '6.orbax-checkpoint-tmp-123').mkdir()   # unfinished save: not a step
      raise RuntimeError('boom\nsecond line')
  state = record.status()
  assert state['status'] == 'failed' and state['reason'] == 'RuntimeError: boom' and state['step'] == 4
  decision = wd.accept(tmp_path, _config(eval_every=2), {'video_dim': 48, 'text_dim': 32})
  assert decision.kind == 'resume' and decision.step == 4
  assert 'resuming the failed run from step 4' in decision.message


def test_overwrite_archives_the_old_run(tmp_path):
  _finish(tmp_path)
  (tmp_path / 'metrics.jsonl').write_text('{"step": 6}\n')
  changed = _config()
  changed['model']['hidden_dim'] = 32
  decision = wd.accept(tmp_path, changed, None, overwrite=True)
  assert decision.kind == 'fresh' and decision.archived
  archived = tmp_path / wd.ARCHIVE_DIR
  (target,) = list(archived.iterdir())
  assert target.name.endswith('-finished-step6')
  assert {p.name for p in target.iterdir()} >= {'config.json', 'state.json', 'metrics.jsonl', 'checkpoints',
                                                'final_params.sha256'}
  assert sorted(p.name for p in tmp_path.iterdir()) == [wd.ARCHIVE_DIR, wd.ATTEMPTS_FILE]
  assert RunRecord(tmp_path).status()['status'] == 'fresh'
  assert wd.accept(tmp_path, changed, None).kind == 'fresh'


def test_checkpoints_without_a_record_are_refused(tmp_path):
  (tmp_path / 'checkpoints' / '8').mkdir(parents=True)
  with pytest.raises(WorkdirError, match=r'holds checkpoints \(step 8\) but no config.json'):
    wd.accept(tmp_path, _config(), None)
  assert wd.accept(tmp_path, _config(), None, overwrite=True).kind == 'fresh'


def test_legacy_workdir_without_state_json(tmp_path):
  (tmp_path / 'checkpoints' / '200').mkdir(parents=True)
  wd.write_json_atomic(tmp_path / wd.CONFIG_FILE, _payload())
  assert wd.accept(tmp_path, _config(), None).kind == 'resume'     # killed before its digest
  (tmp_path / wd.DIGEST_FILE).write_text('ef' * 32 + '\n')
  decision = wd.accept(tmp_path, _config(), None)
  assert decision.kind == 'finished' and decision.step == 200


# ----------------------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------------------
def test_missing_digest_is_written_from_state_or_hook(tmp_path):
  record = _finish(tmp_path, digest='12' * 32)
  (tmp_path / wd.DIGEST_FILE).unlink()
  assert record.ensure_digest(6) == '12' * 32
  assert (tmp_path / wd.DIGEST_FILE).read_text() == '12' * 32 + '\n'
  # A finished state without a digest (killed between checkpoint and digest, older writer): the hook computes it.
  (tmp_path / wd.DIGEST_FILE).unlink()
  wd.write_json_atomic(tmp_path / wd.STATE_FILE, {'status': 'finished', 'step': 6})
  calls = []
  assert record.ensure_digest(6, lambda step: calls.append(step) or '34' * 32) == '34' * 32
  assert calls == [6] and record.status()['digest'] == '34' * 32


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
  path = tmp_path / 'config.json'
  wd.write_json_atomic(path, {'a': 1})

  def crash(*_):
    raise OSError('disk gone')

  monkeypatch.setattr(os, 'replace', crash)
  with pytest.raises(OSError):
    wd.write_json_atomic(path, {'a': 2})
  assert json.loads(path.read_text()) == {'a': 1}


def test_attempts_log_has_one_line_per_attempt_including_killed_ones(tmp_path):
  workdir = tmp_path / 'run'
  child = _holder(tmp_path, workdir, attempt=True)
  child.send_signal(signal.SIGKILL)
  child.wait(timeout=30)
  assert RunRecord(workdir).status()['status'] == 'running'
  with RunLock(workdir, notice=lambda _: None):
    decision = wd.accept(workdir, {'train': {'num_steps': 6}}, {'video_dim': 4})
    assert decision.kind == 'resume'
    record = RunRecord(workdir)
    with record.attempt({'run': {'train': {'num_steps': 6}}, 'dims': {'video_dim': 4}}, decision, argv=['again']):
      record.mark_finished(6, '56' * 32)
  lines = [json.loads(l) for l in (workdir / wd.ATTEMPTS_FILE).read_text().splitlines()]
  assert [l['outcome'].split(':')[0] for l in lines] == ['killed', 'finished at step 6']
  assert lines[0]['pid'] == child.pid and lines[0]['config'] == {'train': {'num_steps': 6}}
  assert lines[1]['argv'] == ['again'] and lines[1]['decision'] == 'resume'
  assert not (workdir / wd.OPEN_ATTEMPT_FILE).exists()


@pytest.mark.parametrize('content, expected', [
    (None, 'no such directory'),
    ('', 'not a training workdir or export (no config.json)'),
    ('{"run": {}, ', 'not valid JSON'),
    ('{"run": {}}', "no 'dims' object"),
    ('[1, 2]', 'expected a JSON object'),
])
def test_read_run_config_errors_are_one_line(tmp_path, content, expected):
  workdir = tmp_path / 'run'
  if content is not None:
    workdir.mkdir()
    if content:
      (workdir / 'config.json').write_text(content)
  with pytest.raises(WorkdirError) as info:
    wd.read_run_config(workdir)
  assert expected in str(info.value) and '\n' not in str(info.value)


def test_read_run_config_returns_the_record(tmp_path):
  wd.write_json_atomic(tmp_path / 'config.json', _payload())
  assert wd.read_run_config(tmp_path)['dims'] == {'video_dim': 48, 'text_dim': 32}


def test_check_config_arg():
  def get_config(arg=''):
    return wd.check_config_arg(arg, ('', 'tiny'))

  assert get_config('tiny') == 'tiny' and get_config('') == ''
  with pytest.raises(wd.ConfigArgError) as info:
    get_config('tyny')
  message = str(info.value)
  assert 'test_workdir.py' in message and "unknown config argument 'tyny'" in message
  assert "did you mean" in message and message.endswith(':tiny?') and '\n' not in message
