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
