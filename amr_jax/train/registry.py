"""Methods by name: `config.method` -> its task class, imported by module name (big_vision's importlib style).

A method is registered by one line in METHODS ('name': 'module'); a dotted name is imported as given (tests).
"""
from __future__ import annotations

import importlib
import json
import pathlib
from typing import Optional

import ml_collections

from amr_jax import task as task_lib
from amr_jax.train import checkpoints as ckpt_lib

# name -> module that defines `TASK` (a amr_jax.task.Task subclass). Strings only: nothing is imported here.
METHODS = {
    'amr': 'amr_jax.projects.amr.task',
    'flashmmr': 'amr_jax.projects.flashmmr.task',
    'amdnet': 'amr_jax.projects.amdnet.task',
    'cpl': 'amr_jax.projects.cpl.task',
    'mcmt': 'amr_jax.projects.mcmt.task',
}


def method_name(config) -> str:
  return config.get('method', None) or config.get('task', 'amr')


def task_class(name: str) -> type:
  """The Task subclass of a registered method name, or of a dotted module path that defines TASK."""
  module_name = METHODS.get(name, name if '.' in name else None)
  if module_name is None:
    raise ValueError(f'unknown method {name!r}; registered: {", ".join(sorted(METHODS))} '
                     '(or a dotted module path defining TASK)')
  cls = getattr(importlib.import_module(module_name), 'TASK', None)
  if not (isinstance(cls, type) and issubclass(cls, task_lib.Task)):
    raise ValueError(f'module {module_name} defines no TASK (a amr_jax.task.Task subclass)')
  return cls


def make_task(config, dims: Optional[dict] = None) -> task_lib.Task:
  return task_class(method_name(config))(config, dims)


def read_saved(path) -> dict:
  """The record (`config.json`) of a training workdir or export: {'run', 'dims', 'task'}."""
  path = pathlib.Path(path)
  record = path / 'config.json'
  if not record.exists():
    raise FileNotFoundError(f'{path}: not a training workdir or export (no config.json)')
  try:
    return json.loads(record.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{record}: not valid JSON ({e.msg} at line {e.lineno})') from None


def task_from_saved(path) -> task_lib.Task:
  """Rebuilds the task of a workdir or export from its record alone (no data files needed)."""
  saved = read_saved(path)
  config = ml_collections.ConfigDict(saved['run'])
  return make_task(config, saved['dims'])


def load_trained_params(workdir: str, which: str = 'last'):
  """Trainable params of a training workdir (latest rolling checkpoint, or 'best'), or of an export dir."""
  path = pathlib.Path(workdir)
  if (path / 'config.json').exists() and (path / 'params').exists():
    return ckpt_lib.load_export(path)[0]
  if which == 'best' and not (path / 'best').exists():
    which = 'last'
  sub = path / ('checkpoints' if which == 'last' else 'best')
  state, _, _ = ckpt_lib.restore_params_only(sub)
  return state['params']


def reference_module(name: str) -> str:
  """The parity checker of a method: `<its package>.reference`, defining run_check(fixture_dir) -> (lines, ok)."""
  if name not in METHODS:
    raise ValueError(f'unknown method {name!r}; registered: {", ".join(sorted(METHODS))}')
  return METHODS[name].rsplit('.', 1)[0] + '.reference'
