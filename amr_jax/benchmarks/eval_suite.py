"""Benchmark of the evaluation path: the whole `launch/evaluate.py --task=qvh` process on QVH val (1,550 queries).

Also times `evaluate()` alone in-process (rows already parsed) and compares with the official moment_detr CLI.
"""
from __future__ import annotations

import compileall
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from amr_jax.metrics import api, common
import json

ROOT = pathlib.Path(__file__).resolve().parents[2]
SUBMISSION = ROOT / 'tests' / 'fixtures' / 'eval' / 'qvh_val_preds_A.jsonl'
ANNOTATIONS = ROOT / 'data' / 'annotations' / 'qvhighlights' / 'highlight_val_release.jsonl'
NUM_QUERIES = 1550
OFFICIAL_SCRIPT_S = 6.9  # moment_detr standalone_eval/eval.py on the same files, measured on the dev machine


def _time_cli(out_path: pathlib.Path) -> float:
  command = [sys.executable, str(ROOT / 'launch' / 'evaluate.py'), '--task=qvh', f'--submission={SUBMISSION}',
             f'--annotations={ANNOTATIONS}', f'--out={out_path}']
  start = time.perf_counter()
  subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
  return time.perf_counter() - start


def run(repeats: int = 15) -> dict:
  """Median/min/max wall seconds of the CLI process over `repeats` runs, plus in-process `evaluate()` time.

  Steady state is measured: the evaluator's .pyc files are compiled first (as an installed package has them,
  also under PYTHONDONTWRITEBYTECODE) and one untimed run warms the page cache.
  """
  compileall.compile_dir(ROOT / 'amr_jax' / 'eval', quiet=1)
  compileall.compile_file(ROOT / 'amr_jax' / '__init__.py', quiet=1)
  with tempfile.TemporaryDirectory() as tmp:
    out_path = pathlib.Path(tmp) / 'metrics.json'
    _time_cli(out_path)
    cli_times = [_time_cli(out_path) for _ in range(repeats)]
  submission_rows, _ = common.load_jsonl(SUBMISSION)
  gt_rows, _ = common.load_jsonl(ANNOTATIONS)
  inprocess_times = []
  for _ in range(repeats):
    start = time.perf_counter()
    api.evaluate('qvh', submission_rows, gt_rows)
    inprocess_times.append(time.perf_counter() - start)
  median = statistics.median(cli_times)
  return {
      'suite': 'eval',
      'median_s': median,
      'min_s': min(cli_times),
      'max_s': max(cli_times),
      'samples_per_s': NUM_QUERIES / median,
      'inprocess_median_s': statistics.median(inprocess_times),
      'official_script_s': OFFICIAL_SCRIPT_S,
      'speedup_vs_official': OFFICIAL_SCRIPT_S / median,
  }


if __name__ == '__main__':
  print(json.dumps(run(), indent=2))
