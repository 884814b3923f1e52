"""The benchmark CLI in tiny mode: it runs and its last line is one JSON object with the contract keys.

Speed targets live in the benchmark output, never in assertions.
"""
import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize('suite', ['input', 'infer', 'profile'])
def test_benchmark_tiny_prints_json(suite):
  proc = subprocess.run([sys.executable, str(ROOT / 'launch' / 'benchmark.py'), f'--suite={suite}', '--dims=tiny',
                         '--batch=8', '--steps=2'], cwd=ROOT, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  if suite == 'profile':  # per-module shares from a profiler trace of the tiny train1 step
    assert result['step_s'] > 0 and result['by_kind']['matmul'] > 0
    assert any(k.startswith('backward: transformer.encode') for k in result['by_module']), result['by_module']
    return
  assert result['suite'] == suite and result['median_s'] > 0 and result['samples_per_s'] > 0
  if suite == 'input':  # both pipelines are timed: plain samples and online Splice (stage 1's input)
    assert result['plain_samples_per_s'] > 0 and result['ratio_to_step_demand'] > 0
