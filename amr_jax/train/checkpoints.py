"""Orbax checkpoints: the last k (async, every N steps) plus the best by a val metric, and exports.

Layout: WORKDIR/checkpoints/<step>/{state,meta}, WORKDIR/best/<step>/{state,meta}; exports hold params + config.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """Two CheckpointManagers over one workdir: rolling `checkpoints/` and single `best/`."""

  def __init__(self, workdir: str | pathlib.Path, keep: int = 3, best_metric: str = 'MR-full-mAP'):
    self.workdir = pathlib.Path(workdir).resolve()
    self.best_metric = best_metric
    self.last = ocp.CheckpointManager(
        self.workdir / 'checkpoints', item_names=('state', 'meta'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
    self.best = ocp.CheckpointManager(
        self.workdir / 'best', item_names=('state', 'meta'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda meta: meta.get(best_metric, -1.0), best_mode='max',
            enable_async_checkpointing=False))

  def latest_step(self) -> Optional[int]:
    return self.last.latest_step()

  def save(self, step: int, state: Any, meta: dict, force: bool = False) -> None:
    self.last.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=force)

  def save_best(self, step: int, state: Any, meta: dict) -> bool:
    """Keep `state` if meta[best_metric] beats the stored best; returns whether it did."""
    prev = self.best_meta()
    if prev is not None and prev.get(self.best_metric, -1.0) >= meta.get(self.best_metric, -1.0):
      return False
    self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)),
                   metrics=meta, force=True)
    return True

  def best_meta(self) -> Optional[dict]:
    step = self.best.latest_step()
    if step is None:
      return None
    return self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def restore(self, abstract_state: Any, step: Optional[int] = None, which: str = 'last'):
    mngr = self.last if which == 'last' else self.best
    step = mngr.latest_step() if step is None else step
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta'], step

  def wait(self) -> None:
    self.last.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.last.close()
    self.best.close()


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
