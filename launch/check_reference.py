"""Parity check against a PyTorch reference fixture (AMR or FlashMMR); sizes come from the fixture itself.

Prints one line per group with its max abs/rel error; exits 0 only when every comparison holds at 1e-5.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from launch import _cli  # noqa: E402

_FIXTURE_DIR = flags.DEFINE_string('fixture_dir', 'tests/fixtures/amr_reference', 'Fixture folder.')
_MODEL = flags.DEFINE_enum('model', 'amr', ['amr', 'flashmmr'], 'Which reference.')


def main(argv):
  del argv
  fixture_dir = pathlib.Path(_FIXTURE_DIR.value)
  if not (fixture_dir / 'tiny_config.json').exists():
    raise FileNotFoundError(f'{fixture_dir}: no tiny_config.json')
  if _MODEL.value == 'amr':
    from amr_jax.reference import amr_check  # pylint: disable=import-outside-toplevel
    report = amr_check.check_amr_fixture(str(fixture_dir))
    print('\n'.join(report.lines()))
    ok = report.ok
  else:
    from amr_jax.reference import flashmmr_check  # pylint: disable=import-outside-toplevel
    rows = flashmmr_check.check_flashmmr_fixture(str(fixture_dir))
    groups = {}
    for row in rows:
      name = row[0]
      group = name.split('.')[0] if '.' in name else name.split(' ')[0]
      groups.setdefault(group, []).append(row)
    for group, grp in groups.items():
      bad = [r[0] for r in grp if not r[3]]
      print(f"{'OK  ' if not bad else 'FAIL'} {group:<34} n={len(grp):<4} max_abs={max(r[1] for r in grp):.3e} "
            f"max_rel={max(r[2] for r in grp):.3e}" + (f' failing={bad[:5]}' if bad else ''))
    ok = all(r[3] for r in rows)
  print('ALL OK' if ok else 'MISMATCH', flush=True)
  sys.exit(0 if ok else 1)


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
