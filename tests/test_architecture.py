"""The shape of the house: imports run one way with no cycle, and a new method needs no trainer edit.

A toy method registered from a test module trains, evaluates, exports and predicts through the generic paths.
"""
import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('amr_jax', 'data_pipelines', 'launch', 'configs')

# Lower rank = lower layer. A module may import only modules of its own rank or lower.
LAYERS = (
    (0, ('amr_jax', 'amr_jax.jax_setup', 'amr_jax.ops')),
    (1, ('amr_jax.data', 'amr_jax.metrics', 'amr_jax.task')),
    (2, ('data_pipelines',)),
    (3, ('amr_jax.projects',)),
    (4, ('amr_jax.train',)),
    (5, ('amr_jax.workflows', 'amr_jax.benchmarks', 'configs')),
    (6, ('launch',)),
)
# Imports inside functions that are allowed, each for a stated reason (none of them dodges a cycle).
LOCAL_IMPORT_ALLOWED = {
    'tensorflow': 'TF starts in seconds: only the training input pipeline and the TB writer need it',
    'torch': 'optional: only reading a PyTorch .ckpt needs it',
    'matplotlib': 'optional plotting backend, selected before pyplot loads',
    'matplotlib.pyplot': 'as above',
    'jax': 'jax_setup configures the cache before jax is first imported by the caller',
    'absl': 'evaluate.py parses the documented flag form without absl (startup time, see its docstring)',
    'absl.app': 'as above',
    'absl.flags': 'as above',
    'absl.logging': 'as above',
    'ctypes': 'evaluate.py: glibc malloc tuning, optional',
    'amr_jax.metrics.common': 'evaluate.py loads numpy-backed code only after its flags parse',
    'h5py': 'optional: only the hdf5 layouts need it',
    'nltk': 'optional tagger/tokeniser, with a documented fallback',
}


def module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(ROOT).with_suffix('')
  parts = rel.parts[:-1] if rel.name == '__init__' else rel.parts
  return '.'.join(parts)


def rank(name: str) -> int:
  best, best_len = None, -1
  for r, prefixes in LAYERS:
    for p in prefixes:
      if (name == p or name.startswith(p + '.')) and len(p) > best_len:
        best, best_len = r, len(p)
  return best


def collect():
  """{module: [(imported module, line, is_local)]} over every package file."""
  modules = {}
  for pkg in PACKAGES:
    for path in sorted((ROOT / pkg).rglob('*.py')):
      modules[module_name(path)] = path
  graph = {}
  for name, path in modules.items():
    tree = ast.parse(path.read_text(), str(path))
    local_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    edges = []
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        submodules = [f'{node.module}.{a.name}' for a in node.names if f'{node.module}.{a.name}' in modules]
        targets = submodules or [node.module]
      else:
        continue
      for t in targets:
        edges.append((t, node.lineno, id(node) in local_nodes))
    graph[name] = edges
  return modules, graph


def test_imports_run_one_way_with_no_cycle():
  modules, graph = collect()
  upward, lazy = [], []
  internal = {m: [t for t, _, _ in edges if t in modules] for m, edges in graph.items()}
  for m, edges in graph.items():
    for target, line, is_local in edges:
      if target in modules and rank(target) > rank(m):
        upward.append(f'{modules[m].relative_to(ROOT)}:{line} {m} (layer {rank(m)}) imports {target} '
                      f'(layer {rank(target)})')
      if is_local and target not in LOCAL_IMPORT_ALLOWED and not target.startswith('importlib'):
        lazy.append(f'{modules[m].relative_to(ROOT)}:{line} imports {target} inside a function')
  assert not upward, '\n'.join(upward)
  assert not lazy, '\n'.join(lazy)
  # Cycles (Tarjan-free DFS over the internal graph).
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for t in internal.get(m, []):
      if state.get(t) == 1:
        cycles.append(' -> '.join(stack[stack.index(t):] + [t]))
      elif t not in state:
        visit(t)
    stack.pop()
    state[m] = 2

  for m in internal:
    if m not in state:
      visit(m)
  assert not cycles, '\n'.join(cycles)


def test_no_launch_script_edits_sys_path():
  offenders = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob('*.py')
               if 'sys.path.insert' in p.read_text() or 'sys.path.append' in p.read_text()]
  assert not offenders, offenders


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
  sys.path.insert(0, str(ROOT))  # the toy method lives in tests/, which is not an installed package
  from tests import toy_method  # pylint: disable=import-outside-toplevel
  from amr_jax.train import loop  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp('toy')
  toy_method.write_split(root / 'train.jsonl', 64, 0)
  toy_method.write_split(root / 'val.jsonl', 20, 1)
  config = toy_method.get_config(str(root / 'train.jsonl'), str(root / 'val.jsonl'))
  result = loop.train_and_evaluate(config, str(root / 'run'))
  return root, result


def test_toy_method_trains_and_evaluates_through_the_generic_trainer(toy_run):
  root, result = toy_run
  assert result['step'] == 60 and result['step_compiles'] == 1
  assert (root / 'run' / 'final_params.sha256').read_text().strip() == result['digest']
  rows = [json.loads(line) for line in (root / 'run' / 'metrics.jsonl').read_text().splitlines()]
  evals = [r for r in rows if 'val/neg_mse' in r]
  assert [r['step'] for r in evals] == [20, 40, 60]
  assert evals[-1]['val/neg_mse'] > evals[0]['val/neg_mse']        # it learns
  best = json.loads((root / 'run' / 'config.json').read_text())
  assert best['task'] == 'toy' and best['dims'] == {'x_dim': 6}
  best_steps = [int(p.name) for p in (root / 'run' / 'best').iterdir() if p.name.isdigit()]
  assert best_steps == [max(evals, key=lambda r: r['val/neg_mse'])['step']]


def test_toy_method_exports_and_predicts_through_the_launch_scripts(toy_run, tmp_path):
  root, _ = toy_run
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  export = tmp_path / 'export'
  proc = subprocess.run([sys.executable, 'launch/export.py', f'--workdir={root / "run"}', f'--out={export}'],
                        cwd=ROOT, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  outs = []
  for source in (root / 'run', export):
    out = tmp_path / f'{source.name}.jsonl'
    proc = subprocess.run([sys.executable, 'launch/predict.py', f'--workdir={source}',
                           f'--annotations={root / "val.jsonl"}', '--features=unused', f'--out={out}'],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outs.append(out.read_text())
  assert outs[0] == outs[1] and len(outs[0].splitlines()) == 20
  from tests import toy_method  # pylint: disable=import-outside-toplevel
  result = toy_method.ToyMSE().evaluate_files(str(tmp_path / 'export.jsonl'), str(root / 'val.jsonl'))
  assert result['count'] == 20 and result['neg_mse'] < 0


def test_unknown_method_and_evaluator_are_one_line_errors():
  import ml_collections  # pylint: disable=import-outside-toplevel
  from amr_jax.metrics import registry as eval_registry  # pylint: disable=import-outside-toplevel
  from amr_jax.train import registry  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match='unknown method'):
    registry.make_task(ml_collections.ConfigDict({'method': 'nope'}))
  with pytest.raises(ValueError, match='unknown evaluator type'):
    eval_registry.get('nope')
