"""Where the train step's time goes, per model module and per kind of op, from a jax.profiler trace.

Each XLA thunk in the trace is mapped to the `op_name` metadata of its HLO instruction (the Flax module path).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import jax.numpy as jnp

from amr_jax.benchmarks import steps
from amr_jax.train.state import TrainState, make_train_step
import time

_SKIP = ('$', 'Thunk', 'Pjit', 'Common', 'SlinkyThreadPool')


def _instruction_op_names(hlo_text: str) -> dict:
  """{instruction name: op_name}; a fusion/call gets the op_name of its computation's root (last) op."""
  direct, calls, computation_ops = {}, {}, collections.defaultdict(list)
  current = None
  for line in hlo_text.splitlines():
    header = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
    if header and not line.startswith(' '):
      current = header.group(1)
      continue
    inst = re.match(r'\s+(?:ROOT )?%?([\w.\-]+) = ', line)
    if not inst:
      continue
    op = re.search(r'op_name="([^"]+)"', line)
    if op:
      direct[inst.group(1)] = op.group(1)
      computation_ops[current].append(op.group(1))
    called = re.search(r'calls=%?([\w.\-]+)', line)
    if called:
      calls[inst.group(1)] = called.group(1)
  names = dict(direct)
  for inst, comp in calls.items():
    if inst not in names and computation_ops.get(comp):
      names[inst] = computation_ops[comp][-1]
  return names


def _module_of(op_name: str) -> str:
  """'forward|backward: <module>' from an op_name such as jit(step)/transpose(jvp(AMR))/transformer.encode/..."""
  parts = op_name.split('/')[1:]  # drop jit(step)
  if not parts:
    return 'other'
  head = parts[0]
  if 'AMR' in head or 'FlashMMR' in head:
    direction = 'backward' if head.startswith('transpose') else 'forward'
    module = '/'.join(p for p in parts[1:3] if not p.startswith(('...', 'jit(', 'dot_general')))
    module = re.sub(r'/layers_\d+$', '', module) or 'model (top level)'
    return f'{direction}: {module}'
  if head.startswith('cond') or 'adam' in op_name.lower() or 'clip' in op_name.lower():
    return 'optimizer update (clip + AdamW)'
  if 'while' in op_name or 'vmap' in head:
    return 'matcher + losses'
  return 'losses and glue'


def _kind_of(thunk_name: str) -> str:
  base = re.sub(r'[.\d]+$', '', thunk_name)
  if base.startswith(('ynn_fusion', 'xnn_fusion', 'dot', 'onednn')):
    return 'matmul'
  if 'copy' in base or 'transpose' in base:
    return 'copy / transpose'
  return 'elementwise / reduce / other'


def run(suite: str = 'train1', batch: int = 32, dims: str = 'real', calls: int = 3) -> dict:
  """Traces `calls` steps; returns {'step_s', 'thunk_ms', 'by_module': {..: ms}, 'by_kind': {..: ms}}."""
  config, task, spec = steps.build_task(suite, dims)
  host = steps.random_batch(batch, spec)
  dev = jax.device_put(host)
  rng = jax.random.key(0, impl='rbg')
  params = task.init_model_params(rng, {k: v[:1] for k, v in host.items()})
  frozen = None
  if task.config.model.get('stage') == 'distill':
    params, frozen = task.stage2_from_stage1(params, task.init_model_params(rng, {k: v[:1] for k, v in host.items()}),
                                             rng)
  tx = task.optimizer(100, 0)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen_params=frozen,
                     opt_state=tx.init(params), bad_steps=jnp.zeros((), jnp.int32))
  result = profile_jitted(jax.jit(make_train_step(task, tx)), (state, dev, rng), calls)
  return dict(suite=f'profile:{suite}', dims=dims, batch=batch, **result)


def profile_jitted(jitted, args, calls: int = 3) -> dict:
  """Traces `calls` calls of a jitted function: {'step_s', 'thunk_ms', 'by_module', 'by_kind'} (ms per call)."""
  compiled = jitted.lower(*args).compile()
  op_names = _instruction_op_names(compiled.as_text())
  jax.block_until_ready(compiled(*args))
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    for _ in range(calls):
      jax.block_until_ready(compiled(*args))
    step_s = (time.perf_counter() - start) / calls
    jax.profiler.stop_trace()
    trace_file = glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True)[0]
    events = json.load(gzip.open(trace_file))['traceEvents']
  by_module, by_kind = collections.Counter(), collections.Counter()
  for event in events:
    if event.get('ph') != 'X' or 'dur' not in event or event['name'].startswith(_SKIP):
      continue
    ms = event['dur'] / 1000 / calls
    by_module[_module_of(op_names.get(event['name'], ''))] += ms
    by_kind[_kind_of(event['name'])] += ms
  return dict(step_s=step_s, thunk_ms=sum(by_kind.values()),
              by_module={k: round(v, 1) for k, v in by_module.most_common()},
              by_kind={k: round(v, 1) for k, v in by_kind.most_common()})


def table(result: dict, min_share: float = 0.01) -> str:
  """Markdown rows: part of the step, thunk ms per step, share; parts under `min_share` are folded into one row."""
  total = result['thunk_ms']
  rows = ['| part of the step | thunk ms | share |', '|---|---|---|']
  rest = 0.0
  for name, ms in result['by_module'].items():
    if ms < min_share * total:
      rest += ms
    else:
      rows.append(f'| {name} | {ms:.0f} | {100 * ms / total:.1f} % |')
  rows.append(f'| rest (parts under {100 * min_share:.0f} % each) | {rest:.0f} | {100 * rest / total:.1f} % |')
  rows.append('| **by kind of op** | | |')
  rows += [f'| {name} | {ms:.0f} | {100 * ms / total:.1f} % |' for name, ms in result['by_kind'].items()]
  return '\n'.join(rows)
