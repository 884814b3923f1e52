"""`launch/check_reference.py` on the shipped AMR fixture: every group within 1e-5, exit 0.

The FlashMMR fixture is covered by tests/test_flashmmr_parity.py through the same checker module.
"""
import subprocess
import sys

from conftest import FIXTURES, ROOT


def test_check_reference_amr_passes():
  proc = subprocess.run([sys.executable, str(ROOT / 'launch' / 'check_reference.py'),
                         f'--fixture_dir={FIXTURES / "amr_reference"}'], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = [l for l in proc.stdout.splitlines() if l.startswith(('OK', 'FAIL'))]
  groups = {l[5:].split(' n=')[0].strip() for l in lines}
  for group in ('stage1 outputs', 'stage1 gradients', 'stage1 post-step params', 'stage2 losses',
                'stage2 gradients', 'stage2 post-step forward'):
    assert any(g.startswith(group) for g in groups), group
  assert all(l.startswith('OK') for l in lines)
  assert proc.stdout.strip().endswith('ALL OK')


def test_check_reference_rejects_missing_fixture(tmp_path):
  proc = subprocess.run([sys.executable, str(ROOT / 'launch' / 'check_reference.py'), f'--fixture_dir={tmp_path}'],
                        cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr


def test_amr_checker_reports_rounding_boundary_flips():
  """The shipped fixture has windows whose unrounded values sit on a 4-decimal boundary: they pass as flips."""
  from amr_jax.projects.amr import reference
  lines, ok = reference.run_check(str(FIXTURES / 'amr_reference'))
  before = [l for l in lines if 'before post-processing' in l]
  assert ok and before and 'rounding_flips=' in before[0]


def test_amr_rounded_compare_rejects_a_real_difference():
  import numpy as np
  from amr_jax.projects.amr import reference
  want = np.array([1.2345, 2.0])
  # one unit off and the unrounded value on the boundary: a flip; one unit off but far from it: a failure
  assert reference.rounded_errors(want + [1e-4, 0], want, want + [0.5e-4, 0], 1e-4)[2:] == (True, 1)
  assert reference.rounded_errors(want + [1e-4, 0], want, want + [0.9e-4, 0], 1e-4)[2] is False


def test_flashmmr_checker_handles_ragged_gt_counts(tmp_path):
  """A fixture whose samples have different numbers of GT windows (here: one window repeated, which leaves
  every max-IoU target unchanged) is checked, not crashed on."""
  import shutil
  import numpy as np
  from amr_jax.projects.flashmmr import reference
  fixture = tmp_path / 'fixture'
  shutil.copytree(FIXTURES / 'flashmmr_reference', fixture)
  data = dict(np.load(fixture / 'inference_outputs.npz'))
  key = 'sample0.relevant_windows_sec'
  data[key] = np.concatenate([data[key], data[key][:1]])
  counts = {k: len(v) for k, v in data.items() if k.endswith('relevant_windows_sec')}
  assert len(set(counts.values())) > 1, counts
  np.savez(fixture / 'inference_outputs.npz', **data)
  lines, ok = reference.run_check(str(fixture))
  assert any(l.split()[1] == 'pv' and l.startswith('OK') for l in lines), lines
