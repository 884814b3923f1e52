"""The lifecycle of a run's workdir: fresh -> running -> finished | failed, guarded by a lock, kept in a record.

`RunLock` (one live trainer per workdir), `RunRecord` (config.json, state.json, attempts.jsonl), `accept()` (fresh /
resume / finished, or one line naming what differs), `read_run_config()`, `check_config_arg()`. Standard library only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

LOCK_FILE = 'run.lock'              # pid, host, start time of the live trainer (flock-held while it runs)
CONFIG_FILE = 'config.json'         # the accepted run: {'run': config, 'dims': data dims, ...} (what Predictor reads)
STATE_FILE = 'state.json'           # {'status': 'running'|'finished'|'failed', 'step', 'digest', 'reason', 'time'}
ATTEMPTS_FILE = 'attempts.jsonl'    # append-only: one line per attempt (time, argv, config, outcome)
OPEN_ATTEMPT_FILE = 'attempt.open.json'   # the attempt in progress; logged as 'killed' if its process died
DIGEST_FILE = 'final_params.sha256'
ARCHIVE_DIR = 'archive'             # overwrite=True moves the previous run here (archive/<time>-<status>-step<N>/)
CHECKPOINT_DIR = 'checkpoints'

# Config keys a resume may change (everything else must match the recorded run): cadence and bookkeeping only.
RESUME_MAY_CHANGE = {
    'train.log_every': 'logging cadence',
    'train.eval_every': 'evaluation cadence (the best checkpoint is still the best seen)',
    'train.checkpoint_every': 'checkpoint cadence',
    'train.keep_checkpoints': 'how many rolling checkpoints stay on disk',
    'train.overwrite': 'the start-over switch itself',
    'train.num_devices': 'data-parallel width: the same math up to the order of the gradient reduction',
    'eval.batch_size': 'inference batch size (padding rows are dropped)',
}
# Keys a resume may only increase (a longer run of a finished or interrupted workdir). The optimiser schedule and
# any curriculum are rebuilt for the new length, so an extended run is not the run a fresh N-step training gives.
RESUME_MAY_EXTEND = ('train.num_steps', 'train.num_epochs')

OVERWRITE_FLAG = '--config.train.overwrite=True'
_MAX_LISTED = 8


class WorkdirError(RuntimeError):
  """A workdir that cannot be used as asked; the message is one line naming the directory and the reason."""


class ConfigArgError(ValueError):
  """An unknown `configs/NAME.py:ARG` argument; one line naming the config file, the argument and the known ones."""


# ----------------------------------------------------------------------------------------------------
# Small file helpers
# ----------------------------------------------------------------------------------------------------
def _now() -> str:
  return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())


def _fsync_dir(directory: pathlib.Path) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` via a temporary file, fsync and rename: readers see the old or the new file."""
  path = pathlib.Path(path)
  tmp = path.with_name(f'.{path.name}.tmp.{os.getpid()}')
  try:
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(OSError):
      tmp.unlink()
  _fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """`obj` as indented JSON, written atomically (see write_text_atomic)."""
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + '\n')


def as_plain(config: Any) -> Any:
  """A run config as plain JSON data: ConfigDicts via to_json_best_effort, tuples as lists."""
  if hasattr(config, 'to_json_best_effort'):
    return json.loads(config.to_json_best_effort())
  return _normalise(config)


def _append_line(path: pathlib.Path, obj: Any) -> None:
  """One JSON line appended and fsync'ed (O_APPEND: concurrent appends do not interleave within a line)."""
  line = (json.dumps(obj, sort_keys=True, default=str) + '\n').encode('utf-8')
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    os.write(fd, line)
    os.fsync(fd)
  finally:
    os.close(fd)


def _read_json(path: pathlib.Path, what: str) -> Any:
  """The JSON in `path`, or None when the file is absent; a one-line WorkdirError when it is damaged."""
  try:
    text = path.read_text(encoding='utf-8')
  except FileNotFoundError:
    return None
  except OSError as e:
    raise WorkdirError(f'{path}: cannot read the {what} ({e.strerror or e})') from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise WorkdirError(f'{path}: the {what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); '
                       f'the file is damaged') from None


def _normalise(obj: Any) -> Any:
  """JSON round trip: tuples -> lists, so a live config compares equal to its stored copy."""
  return json.loads(json.dumps(obj, sort_keys=True, default=str))


def flatten(tree: Mapping, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}; empty sub-dicts are kept as leaves."""
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping) and value:
      flat.update(flatten(value, name + '.'))
    else:
      flat[name] = value
  return flat


def _short(value: Any, width: int = 40) -> str:
  text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
  return text if len(text) <= width else text[:width - 3] + '...'


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def checkpoint_steps(workdir: str | os.PathLike) -> list:
  """Finalised steps under WORKDIR/checkpoints (orbax names a finished step dir by its number), ascending."""
  directory = pathlib.Path(workdir) / CHECKPOINT_DIR
  try:
    names = os.listdir(directory)
  except (FileNotFoundError, NotADirectoryError):
    return []
  return sorted(int(n) for n in names if n.isdigit() and (directory / n).is_dir())


# ----------------------------------------------------------------------------------------------------
# The lock
# ----------------------------------------------------------------------------------------------------
class RunLock:
  """An exclusive lock on a workdir: WORKDIR/run.lock holds the trainer's pid, host and start time.

  The file is `flock`-ed for the life of the process, so the kernel releases it when the process dies (kill -9
  included): a lock file whose flock is free was left by a dead trainer and is taken over with a one-line notice.
  A second live trainer gets a one-line `WorkdirError`. In a multi-process run only process 0 takes the lock.
  """

  def __init__(self, workdir: str | os.PathLike, *, notice: Callable[[str], None] | None = None):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / LOCK_FILE
    self.notice = notice or (lambda line: print(line, file=sys.stderr, flush=True))
    self.stale: Optional[dict] = None     # what a dead previous holder left in the lock file
    self._fd: Optional[int] = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def _holder_message(self, info: Optional[dict]) -> str:
    if not info:
      return f'{self.workdir} is locked by another process ({self.path} is held but names nobody yet)'
    pid, host, since = info.get('pid'), info.get('host'), info.get('started')
    if host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
      return (f'{self.workdir} is locked: pid {pid} on {host} (since {since}) is gone, but a process it started '
              f'still holds {self.path}; stop that process first')
    return (f'{self.workdir} is being trained by pid {pid} on {host} since {since}; wait for it to end or stop '
            f'it (kill {pid}) first')

  def acquire(self) -> 'RunLock':
    if self._fd is not None:
      return self
    try:
      self.workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise WorkdirError(f'{self.workdir}: cannot create the workdir ({e.strerror or e})') from None
    for _ in range(20):
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      except OSError as e:
        raise WorkdirError(f'{self.path}: cannot create the lock file ({e.strerror or e})') from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise WorkdirError(f'{self.path}: cannot lock ({e.strerror or e})') from None
        raise WorkdirError(self._holder_message(self._read_info())) from None
      # The holder we raced with may have unlinked the file after we opened it: lock the file the path names.
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
    else:
      raise WorkdirError(f'{self.path}: could not take the lock (it keeps being replaced)')
    self._fd = fd
    previous = self._read_info()
    if previous:
      self.stale = previous
      self.notice(f'note: {self.path} was left by pid {previous.get("pid")} on {previous.get("host")} '
                  f'(since {previous.get("started")}), which is no longer running; taking it over')
    info = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': _now(), 'argv': list(sys.argv)}
    data = (json.dumps(info, sort_keys=True) + '\n').encode('utf-8')
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
    return self

  def _read_info(self) -> Optional[dict]:
    try:
      text = self.path.read_text(encoding='utf-8').strip()
    except OSError:
      return None
    if not text:
      return None
    try:
      info = json.loads(text)
    except json.JSONDecodeError:
      return {'pid': '?', 'host': '?', 'started': '?'}
    return info if isinstance(info, dict) else None

  def release(self) -> None:
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
        os.unlink(self.path)
    except OSError:
      pass
    finally:
      try:
        fcntl.flock(fd, fcntl.LOCK_UN)
      finally:
        os.close(fd)

  def __enter__(self) -> 'RunLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


# ----------------------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------------------
def read_run_config(workdir: str | os.PathLike) -> dict:
  """WORKDIR/config.json of a training workdir or an export, checked: {'run': dict, 'dims': dict, ...}.

  Raises a one-line WorkdirError for a missing directory or file, invalid JSON or a record without run/dims.
  """
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise WorkdirError(f'{workdir}: no such directory')
  path = workdir / CONFIG_FILE
  saved = _read_json(path, 'run record')
  if saved is None:
    raise WorkdirError(f'{workdir}: not a training workdir or export (no {CONFIG_FILE})')
  if not isinstance(saved, dict):
    raise WorkdirError(f'{path}: expected a JSON object with "run" and "dims", got {type(saved).__name__}')
  missing = [k for k in ('run', 'dims') if not isinstance(saved.get(k), dict)]
  if missing:
    raise WorkdirError(f'{path}: no {" or ".join(repr(k) for k in missing)} object; the record is damaged or '
                       f'was not written by this trainer')
  return saved


def _plain_payload(payload: Mapping) -> dict:
  """A run record ({'run': config (dict or ConfigDict), 'dims': dict, ...}) as plain JSON data."""
  run, dims = payload.get('run'), payload.get('dims')
  if not (isinstance(run, Mapping) or hasattr(run, 'to_json_best_effort')) or not isinstance(dims, Mapping):
    raise ValueError('a run record needs a "run" config and a "dims" mapping')
  return dict(_normalise({k: v for k, v in payload.items() if k != 'run'}), run=as_plain(run))


@dataclasses.dataclass
class Attempt:
  """The attempt in progress: what `RunRecord.attempt()` yields; set `outcome` to override the logged one."""
  started: str
  argv: list
  decision: str
  outcome: Optional[str] = None


class RunRecord:
  """The files that say what a workdir holds: config.json, state.json, attempts.jsonl, final_params.sha256."""

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = pathlib.Path(workdir)
    self.config_path = self.workdir / CONFIG_FILE
    self.state_path = self.workdir / STATE_FILE
    self.attempts_path = self.workdir / ATTEMPTS_FILE
    self.open_attempt_path = self.workdir / OPEN_ATTEMPT_FILE
    self.digest_path = self.workdir / DIGEST_FILE

  # -- reading ---------------------------------------------------------------------------------------
  def read_config(self) -> Optional[dict]:
    """The recorded run ({'run', 'dims', ...}) or None when there is none yet."""
    if not self.config_path.exists():
      return None
    return read_run_config(self.workdir)

  def digest(self) -> Optional[str]:
    try:
      return self.digest_path.read_text().strip() or None
    except OSError:
      return None

  def status(self) -> dict:
    """{'status': 'fresh'|'running'|'finished'|'failed'|'unrecorded', 'step': int|None, ...}.

    'running' also covers a run whose process died (the lock says whether one is alive). Workdirs written before
    state.json existed: config.json + final_params.sha256 = finished, config.json alone = running. 'unrecorded' =
    checkpoints without any config.json (not a run this trainer wrote).
    """
    state = _read_json(self.state_path, 'run state')
    if state is not None:
      if not isinstance(state, dict) or state.get('status') not in ('running', 'finished', 'failed'):
        raise WorkdirError(f'{self.state_path}: unknown run state {_short(state)}; the file is damaged')
      return state
    steps = checkpoint_steps(self.workdir)
    last = steps[-1] if steps else None
    if self.config_path.exists():
      digest = self.digest()
      if digest:
        return {'status': 'finished', 'step': last, 'digest': digest}
      return {'status': 'running', 'step': last}
    if steps:
      return {'status': 'unrecorded', 'step': last}
    return {'status': 'fresh', 'step': None}

  # -- writing ---------------------------------------------------------------------------------------
  def _set_state(self, **state) -> None:
    state.setdefault('time', _now())
    write_json_atomic(self.state_path, state)

  def write_config(self, payload: Mapping) -> None:
    """config.json = `payload` ({'run', 'dims', ...}), atomically; refuses to replace a finished run's record."""
    payload = _plain_payload(payload)
    if self.status()['status'] == 'finished':
      raise WorkdirError(f'{self.workdir} holds a finished run; its {CONFIG_FILE} is not replaced '
                         f'(pass {OVERWRITE_FLAG} to start over)')
    write_json_atomic(self.config_path, payload)

  def mark_running(self, step: Optional[int]) -> None:
    self._set_state(status='running', step=step)

  def mark_failed(self, reason: str, step: Optional[int] = None) -> None:
    self._set_state(status='failed', step=step, reason=reason.strip().splitlines()[0] if reason.strip() else '')

  def mark_finished(self, step: int, digest: str) -> None:
    """final_params.sha256, then state.json 'finished' (a kill between the two leaves a resumable 'running')."""
    write_text_atomic(self.digest_path, digest + '\n')
    self._set_state(status='finished', step=int(step), digest=digest)

  def ensure_digest(self, step: int, digest_hook: Optional[Callable[[int], str]] = None) -> Optional[str]:
    """Writes final_params.sha256 of a finished run when it is missing; returns the digest.

    Uses state.json's digest when it has one, else `digest_hook(step)` (e.g. restore the step's params and hash
    them); None when neither is available.
    """
    digest = self.digest()
    if digest:
      return digest
    state = self.status()
    digest = state.get('digest') or (digest_hook(step) if digest_hook is not None else None)
    if digest:
      write_text_atomic(self.digest_path, digest + '\n')
      if state.get('status') == 'finished' and not state.get('digest'):
        self._set_state(**dict(state, digest=digest, time=_now()))
    return digest

  def log_attempt(self, outcome: str, *, argv: Sequence[str] | None = None, config: Any = None,
                  dims: Any = None, started: Optional[str] = None, **extra) -> None:
    """Appends one line to attempts.jsonl (time, argv, config, outcome, ...)."""
    self.workdir.mkdir(parents=True, exist_ok=True)
    line = {'time': _now(), 'started': started, 'pid': os.getpid(), 'host': socket.gethostname(),
            'argv': list(argv if argv is not None else sys.argv), 'outcome': outcome, 'config': config,
            'dims': dims}
    line.update(extra)
    _append_line(self.attempts_path, line)

  def close_dead_attempt(self) -> Optional[dict]:
    """Logs an attempt whose process died without ending it (kill -9, power loss) as 'killed'; returns it."""
    info = None
    try:
      info = json.loads(self.open_attempt_path.read_text())
    except FileNotFoundError:
      return None
    except (OSError, json.JSONDecodeError):
      info = {}
    if not isinstance(info, dict):
      info = {}
    info = dict(info)
    info.pop('outcome', None)
    info['outcome'] = f'killed: the process (pid {info.get("pid", "?")}) ended without closing its attempt'
    _append_line(self.attempts_path, dict(info, time=_now()))
    self.open_attempt_path.unlink(missing_ok=True)
    return info

  @contextlib.contextmanager
  def attempt(self, payload: Mapping, decision: 'Decision', argv: Sequence[str] | None = None) -> Iterator[Attempt]:
    """One accepted attempt: state.json 'running', then config.json, then the body; one attempts.jsonl line.

    On an exception the run is marked failed with the exception's first line (and the exception propagates); the
    attempt is logged as 'finished at step N' when `mark_finished` was called inside, else 'stopped'.
    """
    if decision.kind == 'finished':
      raise ValueError('a finished run needs no attempt')
    self.close_dead_attempt()
    argv = list(argv if argv is not None else sys.argv)
    current = Attempt(started=_now(), argv=argv, decision=decision.kind)
    payload = _plain_payload(payload)
    self.mark_running(decision.step)
    self.write_config(payload)
    write_json_atomic(self.open_attempt_path, {'started': current.started, 'pid': os.getpid(),
                                               'host': socket.gethostname(), 'argv': argv,
                                               'decision': decision.kind, 'config': payload.get('run'),
                                               'dims': payload.get('dims')})
    outcome = None
    try:
      yield current
      state = self.status()
      if state['status'] == 'finished':
        outcome = f'finished at step {state.get("step")}'
      else:
        outcome = 'stopped'
    except KeyboardInterrupt:
      outcome = 'interrupted'
      raise
    except GeneratorExit:
      outcome = 'abandoned'
      raise
    except SystemExit as e:
      outcome = 'stopped' if e.code in (0, None) else f'exited with status {e.code}'
      raise
    except BaseException as e:  # pylint: disable=broad-except
      first = (str(e).strip().splitlines() or [''])[0]
      reason = f'{type(e).__name__}: {first}' if first else type(e).__name__
      with contextlib.suppress(Exception):
        self.mark_failed(reason, step=(checkpoint_steps(self.workdir) or [None])[-1])
      outcome = f'failed: {reason}'
      raise
    finally:
      with contextlib.suppress(OSError):   # a full disk must not hide the error that ended the attempt
        self.log_attempt(current.outcome or outcome or 'stopped', argv=argv, config=payload.get('run'),
                         dims=payload.get('dims'), started=current.started, decision=decision.kind,
                         changed=list(decision.changed))
        self.open_attempt_path.unlink(missing_ok=True)

  def archive(self) -> Optional[pathlib.Path]:
    """Moves the run's files (all but the lock, the attempts log and archive/) to archive/<time>-<status>-stepN/."""
    keep = {LOCK_FILE, ATTEMPTS_FILE, OPEN_ATTEMPT_FILE, ARCHIVE_DIR}
    entries = [e for e in sorted(os.listdir(self.workdir)) if e not in keep] if self.workdir.is_dir() else []
    if not entries:
      return None
    try:
      state = self.status()
    except WorkdirError:
      state = {'status': 'damaged', 'step': None}
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    target = self.workdir / ARCHIVE_DIR / f'{stamp}-{state["status"]}-step{state.get("step")}'
    n = 1
    while target.exists():
      n += 1
      target = target.with_name(f'{target.name.split("~")[0]}~{n}')
    target.mkdir(parents=True)
    for name in entries:
      os.rename(self.workdir / name, target / name)
    _fsync_dir(self.workdir)
    return target


# ----------------------------------------------------------------------------------------------------
# Accepting a run
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Decision:
  """What to do with a workdir: kind 'fresh' | 'resume' | 'finished', with a one-line `message`.

  step: the finished step ('finished'), the newest checkpoint ('resume'; None = none yet) or None ('fresh').
  changed: the allowed keys that differ from the recorded run ('name: old -> new'). archived: where
  overwrite=True moved the previous run.
  """
  kind: str
  message: str
  step: Optional[int] = None
  digest: Optional[str] = None
  changed: tuple = ()
  archived: Optional[str] = None

  def __str__(self) -> str:
    return self.message


def config_differences(old: Mapping, new: Mapping) -> list:
  """[(key, old, new)] of every flattened key whose value differs; a key on one side only has '(absent)'."""
  absent = '(absent)'
  a, b = flatten(_normalise(old)), flatten(_normalise(new))
  keys = sorted(set(a) | set(b))
  return [(k, a.get(k, absent), b.get(k, absent)) for k in keys if a.get(k, absent) != b.get(k, absent)]


def _fmt_diff(key: str, old: Any, new: Any) -> str:
  return f'{key} {_short(old)} -> {_short(new)}'


def _listing(items: Sequence[str]) -> str:
  shown = ', '.join(items[:_MAX_LISTED])
  return shown + (f' and {len(items) - _MAX_LISTED} more' if len(items) > _MAX_LISTED else '')


def accept(workdir: str | os.PathLike, new_config: Mapping, new_dims: Optional[Mapping] = None,
           overwrite: bool = False, *, may_change: Mapping | Sequence = tuple(RESUME_MAY_CHANGE),
           may_extend: Sequence[str] = RESUME_MAY_EXTEND, argv: Sequence[str] | None = None) -> Decision:
  """Decides what a new attempt with `new_config` (the run config as a plain dict) does in `workdir`.

  'fresh': nothing recorded (or overwrite=True, which first moves the old run to WORKDIR/archive/...).
  'finished': a finished run with the same config (allowed keys aside): the caller exits 0 with the message
  (after `RunRecord.ensure_digest`). 'resume': an unfinished or failed run with a compatible config, or a
  finished one whose train.num_steps / num_epochs grows. Anything else raises a one-line WorkdirError naming the
  keys that differ. `new_dims=None` skips the data-dims comparison (call again once the data is validated).
  Call with the workdir lock held. With `argv`, a refusal or a 'finished' no-op is logged in attempts.jsonl.
  """
  workdir = pathlib.Path(workdir)
  new_config = as_plain(new_config)
  new_dims = _normalise(dict(new_dims)) if new_dims is not None else None
  record = RunRecord(workdir)
  state = record.status()
  status = state['status']
  if status == 'fresh':
    return Decision('fresh', f'{workdir}: new run')
  if overwrite:
    target = record.archive()
    where = f'moved to {target}' if target else 'nothing to move'
    return Decision('fresh', f'{workdir}: starting over on purpose (train.overwrite): the previous {status} run '
                             f'(step {state.get("step")}) was {where}', archived=str(target) if target else None)

  def refuse(reason: str):
    if argv is not None:
      record.log_attempt(f'refused: {reason}', argv=argv, config=new_config, dims=new_dims)
    raise WorkdirError(reason)

  if status == 'unrecorded':
    refuse(f'{workdir} holds checkpoints (step {state.get("step")}) but no {CONFIG_FILE}: not a run this trainer '
           f'recorded; pass {OVERWRITE_FLAG} to move them aside and start over')
  saved = record.read_config()
  diffs = config_differences(saved['run'], new_config)
  if new_dims is not None:
    diffs += [(f'dims.{k}', o, n) for k, o, n in config_differences(saved['dims'], new_dims)]
  allowed, extended, refused = [], [], []
  for key, old, new in diffs:
    if key in may_change:
      allowed.append(_fmt_diff(key, old, new))
    elif (key in may_extend and isinstance(old, (int, float)) and isinstance(new, (int, float))
          and old > 0 and new > old):
      extended.append(_fmt_diff(key, old, new))
    else:
      refused.append(_fmt_diff(key, old, new))
  if refused:
    keys = ', '.join(list(may_change) + [f'{k} (longer only)' for k in may_extend])
    refuse(f'{workdir} holds a {status} run (step {state.get("step")}) with another config: {_listing(refused)}; '
           f'a resume may change only {keys}; pass {OVERWRITE_FLAG} to start over (the old run is archived)')
  changed = tuple(allowed + extended)
  if status == 'finished' and not extended:
    step = state.get('step')
    digest = state.get('digest') or record.digest()
    if argv is not None:
      record.log_attempt(f'already finished at step {step}', argv=argv, config=new_config)
    return Decision('finished', f'{workdir}: already finished at step {step}'
                                + (f' (params sha256 {digest[:12]})' if digest else '')
                                + f'; nothing to do (pass {OVERWRITE_FLAG} to train again)',
                    step=step, digest=digest, changed=changed)
  steps = checkpoint_steps(workdir)
  step = steps[-1] if steps else None
  what = 'extending the finished run' if status == 'finished' else f'resuming the {status} run'
  where = f'from step {step}' if step is not None else 'from scratch (no checkpoint yet)'
  note = f'; changed: {_listing(list(changed))}' if changed else ''
  return Decision('resume', f'{workdir}: {what} {where}{note}', step=step, changed=changed)


# ----------------------------------------------------------------------------------------------------
# Config arguments
# ----------------------------------------------------------------------------------------------------
def _calling_config_file() -> str:
  """The file of the nearest `get_config` frame on the stack (the config being loaded), relative when possible."""
  frame = sys._getframe(2)  # pylint: disable=protected-access
  while frame is not None:
    if frame.f_code.co_name == 'get_config':
      name = frame.f_code.co_filename
      with contextlib.suppress(ValueError):
        name = os.path.relpath(name)
      return name
    frame = frame.f_back
  return 'config'


def check_config_arg(arg: str, allowed: Sequence[str] = ('', 'tiny'), config_file: Optional[str] = None) -> str:
  """Returns `arg` when `allowed`, else raises a one-line ConfigArgError (`configs/x.py:tyny`, with a suggestion).

  Call it first thing in `get_config(arg)`; the message names the config file (found on the stack).
  """
  if arg in allowed:
    return arg
  where = config_file or _calling_config_file()
  known = ', '.join(repr(a) if a else "'' (no argument)" for a in allowed)
  close = difflib.get_close_matches(str(arg), [a for a in allowed if a], n=1, cutoff=0.5)
  hint = f'; did you mean {where}:{close[0]}?' if close else ''
  raise ConfigArgError(f'{where}: unknown config argument {arg!r} (known: {known}){hint}')
