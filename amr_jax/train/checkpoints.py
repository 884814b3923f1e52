"""Orbax checkpoints: the last k (async, every N steps) plus the best by a val metric, and exports; disk faults.

Layout: WORKDIR/checkpoints/<step>/{state,meta}, WORKDIR/best/<step>/{state,meta}; exports hold params + config.
A failed save (read-only directory, disk full) raises one-line `CheckpointError` from the next save/wait/check.
"""
from __future__ import annotations

import json
import logging as py_logging
import math
import os
import pathlib
import sys
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

SAVE_TIMEOUT_S = 300   # bound on one async commit (orbax AsyncOptions.timeout_secs; its default is 1200 s)


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; one line naming the path and the last good checkpoint."""


class _MuteOrbaxErrors(py_logging.Filter):
  """Drops orbax's own ERROR records (tracebacks of a failed background save): CheckpointError reports them once."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not (record.levelno >= py_logging.ERROR and f'{os.sep}orbax{os.sep}' in (record.pathname or ''))


class _MuteOrbaxTaskErrors(py_logging.Filter):
  """Drops asyncio's 'Task exception was never retrieved' for orbax's own write tasks (a failed save: the
  finalize thread already carries the error, which CheckpointError reports)."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    text = str(record.msg)
    return not (text.startswith('Task exception was never retrieved') and 'orbax' in record.getMessage())


_MUTE = _MuteOrbaxErrors()
_MUTE_ASYNCIO = _MuteOrbaxTaskErrors()


def _is_closed_loop_callback(kind, value, tb) -> bool:
  """The 'Event loop is closed' error a storage completion callback raises (straight from C, so its traceback
  starts in asyncio's call_soon_threadsafe) when a failing save tore orbax's writer loop down mid-write."""
  return (kind is RuntimeError and 'Event loop is closed' in str(value) and tb is not None
          and tb.tb_frame.f_code.co_name == 'call_soon_threadsafe')


def _quiet_unraisablehook(previous):
  """sys.unraisablehook without the noise above (that exact case only; everything else goes to `previous`)."""

  def hook(args):
    if _is_closed_loop_callback(args.exc_type, args.exc_value, args.exc_traceback):
      return
    previous(args)

  hook.quiet_checkpoint_hook = True
  return hook


def _mute_orbax_errors() -> None:
  absl_logger = py_logging.getLogger('absl')
  if _MUTE not in absl_logger.filters:
    absl_logger.addFilter(_MUTE)
  asyncio_logger = py_logging.getLogger('asyncio')
  if _MUTE_ASYNCIO not in asyncio_logger.filters:
    asyncio_logger.addFilter(_MUTE_ASYNCIO)
  if not getattr(sys.unraisablehook, 'quiet_checkpoint_hook', False):
    sys.unraisablehook = _quiet_unraisablehook(sys.unraisablehook)


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  if isinstance(e, OSError) and e.strerror:
    text = f'{e.strerror}: {e.filename}' if e.filename else e.strerror
  line = (text.splitlines() or [''])[0]
  return f'{type(e).__name__}: {line[:300]}' if line else type(e).__name__


def finalised_steps(directory: pathlib.Path) -> list:
  """Steps whose save completed (orbax renames `<step>.orbax-checkpoint-tmp*` to `<step>` when it finalises)."""
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  return sorted(int(n) for n in names if n.isdigit() and (directory / n).is_dir())


class Checkpoints:
  """Two CheckpointManagers over one workdir: rolling `checkpoints/` (async) and single `best/` (sync).

  Directory creation is synchronous (`create_directories_asynchronously=False`): an unwritable directory fails
  inside `save()` at once, instead of leaving orbax's writer threads waiting 300 s for a directory signal that
  never comes. The write itself stays asynchronous; its outcome is checked by the next `save`/`wait`/`check`.
  """

  def __init__(self, workdir: str | pathlib.Path, keep: int = 3, best_metric: str = 'MR-full-mAP',
               best_mode: str = 'max', *, async_save: bool = True, save_timeout_s: int = SAVE_TIMEOUT_S):
    if best_mode not in ('max', 'min'):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    _mute_orbax_errors()
    self.workdir = pathlib.Path(workdir).resolve()
    self.best_metric = best_metric
    self.best_mode = best_mode
    self.last_dir = self.workdir / 'checkpoints'
    self.best_dir = self.workdir / 'best'
    self._pending: Optional[int] = None             # step of the async save not yet known to have finished
    self._failure: Optional[CheckpointError] = None
    steps = finalised_steps(self.last_dir)
    self._confirmed: Optional[int] = steps[-1] if steps else None   # newest step known complete
    async_options = ocp.AsyncOptions(timeout_secs=int(save_timeout_s), create_directories_asynchronously=False)
    try:
      self.last = ocp.CheckpointManager(
          self.last_dir, item_names=('state', 'meta'),
          options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=async_save,
                                               async_options=async_options))
    except OSError as e:
      raise CheckpointError(f'cannot open the checkpoint directory {self.last_dir} ({_first_line(e)})') from None
    self._best: Optional[ocp.CheckpointManager] = None

  # -- the best manager is created on first use: no empty best/ when the run keeps no best -------------------
  @property
  def best(self) -> ocp.CheckpointManager:
    if self._best is None:
      worst = -math.inf if self.best_mode == 'max' else math.inf
      try:
        self._best = ocp.CheckpointManager(
            self.best_dir, item_names=('state', 'meta'),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, cleanup_tmp_directories=True,
                best_fn=lambda meta: meta.get(self.best_metric, worst), best_mode=self.best_mode,
                enable_async_checkpointing=False))
      except OSError as e:
        raise CheckpointError(f'cannot open the checkpoint directory {self.best_dir} ({_first_line(e)})') from None
    return self._best

  # -- faults ---------------------------------------------------------------------------------------------
  def last_good(self) -> Optional[int]:
    """The newest step whose save completed on disk (None: none yet)."""
    steps = finalised_steps(self.last_dir)
    return steps[-1] if steps else self._confirmed

  def _fail(self, directory: pathlib.Path, step: Optional[int], error: BaseException) -> CheckpointError:
    good = self.last_good()
    where = f'{self.last_dir}/{good}' if good is not None else 'none'
    what = f'step {step}' if step is not None else 'a checkpoint'
    self._failure = CheckpointError(f'saving {what} to {directory} failed ({_first_line(error)}); '
                                    f'last good checkpoint: {where}')
    self._pending = None
    return self._failure

  def _raise_if_failed(self) -> None:
    if self._failure is not None:
      raise self._failure

  def check(self) -> None:
    """Non-blocking: raises CheckpointError if the last async save has failed (call it every few steps)."""
    self._raise_if_failed()
    if self._pending is not None and not self.last.is_saving_in_progress():
      self.wait()

  # -- saving ---------------------------------------------------------------------------------------------
  def latest_step(self) -> Optional[int]:
    return self.last.latest_step()

  def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
    """Starts an async save of `step`; False when that step is already on disk (a resumed final step).

    Raises CheckpointError when this save cannot start or the previous one failed.
    """
    self._raise_if_failed()
    if step in self.last.all_steps():
      return False
    pending = self._pending
    try:
      self.last.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)), force=force)
    except Exception as e:  # pylint: disable=broad-except
      # orbax first waits for the previous save: its failure surfaces here too.
      failed = pending if pending is not None and pending not in finalised_steps(self.last_dir) else step
      raise self._fail(self.last_dir, failed, e) from None
    if pending is not None:     # orbax waited for it before starting this one
      self._confirmed = pending
    self._pending = step
    return True

  def _better(self, new: dict, prev: Optional[dict]) -> bool:
    if prev is None:
      return True
    worst = -math.inf if self.best_mode == 'max' else math.inf
    a, b = new.get(self.best_metric, worst), prev.get(self.best_metric, worst)
    return a > b if self.best_mode == 'max' else a < b

  def save_best(self, step: int, state: Any, meta: dict) -> bool:
    """Keep `state` if meta[best_metric] beats the stored best (best_mode); returns whether it did."""
    self._raise_if_failed()
    if not self.best_metric:
      return False
    if step in self.best.all_steps() or not self._better(meta, self.best_meta()):
      return False
    try:
      self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)),
                     metrics=meta, force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._fail(self.best_dir, step, e) from None
    return True

  def best_meta(self) -> Optional[dict]:
    if self._best is None and not self.best_dir.exists():
      return None
    step = self.best.latest_step()
    if step is None:
      return None
    return self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def restore(self, abstract_state: Any, step: Optional[int] = None, which: str = 'last'):
    mngr = self.last if which == 'last' else self.best
    directory = self.last_dir if which == 'last' else self.best_dir
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint to restore under {directory}')
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except (OSError, ValueError) as e:
      raise CheckpointError(f'cannot restore {directory}/{step} ({_first_line(e)})') from None
    return restored['state'], restored['meta'], step

  def wait(self) -> None:
    """Blocks until the async save is on disk; CheckpointError if it failed."""
    self._raise_if_failed()
    pending = self._pending
    try:
      self.last.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._fail(self.last_dir, pending, e) from None
    if pending is not None:
      self._confirmed = pending
    self._pending = None
    if self._best is not None:
      self._best.wait_until_finished()

  def close(self) -> None:
    """Waits for the pending save and closes; after a reported failure it only releases (never raises again)."""
    if self._failure is None:
      self.wait()
    for mngr in (self.last, self._best):
      if mngr is None:
        continue
      try:
        mngr.close()
      except Exception:  # pylint: disable=broad-except
        if self._failure is None:
          raise


def restore_params_only(ckpt_dir: pathlib.Path, step: Optional[int] = None):
  """Raw restore of the `state` item (no target): returns (state dict, meta, step).

  Arrays saved on another topology (a pod, a 2-process run) land on this process's first device.
  """
  mngr = ocp.CheckpointManager(pathlib.Path(ckpt_dir).resolve(), item_names=('state', 'meta'))
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint under {ckpt_dir}')
  fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(fallback_sharding=fallback),
                                                        meta=ocp.args.JsonRestore()))
  mngr.close()
  return restored['state'], restored['meta'], step


def save_export(out_dir: str | pathlib.Path, params: Any, config: dict) -> None:
  """Inference-only export: params (orbax) + config.json; no optimiser state, no teacher."""
  out = pathlib.Path(out_dir).resolve()
  out.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(out / 'params', jax.device_get(params), force=True)
  (out / 'config.json').write_text(json.dumps(config, indent=2, sort_keys=True))


def load_export(export_dir: str | pathlib.Path):
  export = pathlib.Path(export_dir).resolve()
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(export / 'params')
  return params, json.loads((export / 'config.json').read_text())
