"""Test setup: 8 simulated CPU devices (before jax starts), repo root on sys.path, shared fixtures.

Tests never read the team's shared folder: everything they need is under tests/fixtures and data/.
"""
import os
import pathlib
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

FIXTURES = ROOT / 'tests' / 'fixtures'
ANNOTATIONS = ROOT / 'data' / 'annotations'


@pytest.fixture(scope='session')
def repo_root() -> pathlib.Path:
  return ROOT
