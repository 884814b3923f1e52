"""Every config mistake on the command line is one line, exit 1, no traceback; --config_help lists the keys.

A stand-in launcher with launch/train.py's flags (it imports only launch._cli) keeps each case under a second;
launch/train.py itself runs twice (an unknown config argument, --config_help).
"""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from launch import _cli

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCHER = textwrap.dedent('''
    """Stand-in for launch/train.py: the same flags; main prints the parsed num_steps."""
    from absl import flags
    from ml_collections import config_flags
    from launch import _cli

    _CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
    _WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs).')
    flags.mark_flags_as_required(['config', 'workdir'])


    def main(argv):
      del argv
      print('num_steps', _CONFIG.value.train.num_steps)


    if __name__ == '__main__':
      _cli.run(main)
''')
OWN_CONFIG = textwrap.dedent('''
    """A config that checks its argument with workdir.check_config_arg and documents keys in HELP."""
    import ml_collections
    from amr_jax.train.workdir import check_config_arg

    HELP = {'train.num_steps': 'optimiser steps of the run'}


    def get_config(arg=''):
      tiny = check_config_arg(arg, ('', 'tiny')) == 'tiny'
      c = ml_collections.ConfigDict()
      c.train = ml_collections.ConfigDict()
      c.train.num_steps = 3 if tiny else 300   # overridden by HELP
      c.train.log_every = 10                   # steps between log lines
      return c
''')
BROKEN_CONFIG = 'def get_config(arg=""):\n  return undefined_name\n'


@pytest.fixture()
def launcher(tmp_path):
  script = tmp_path / 'train_standin.py'
  script.write_text(LAUNCHER)
  (tmp_path / 'own.py').write_text(OWN_CONFIG)
  (tmp_path / 'broken.py').write_text(BROKEN_CONFIG)

  def run(*args, script=script):
    env = dict(os.environ, AMR_JAX_DEBUG='')
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env=env)
    return done
  run.dir = tmp_path
  return run


def _one_line_error(done, *needles):
  assert done.returncode == 1, (done.stdout, done.stderr)
  assert 'Traceback' not in done.stderr, done.stderr
  lines = [l for l in done.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, done.stderr
  assert lines[0].startswith('error: ')
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def test_unknown_config_key_suggests_the_right_one(launcher):
  done = launcher('--config=configs/amr_stage1.py:tiny', '--config.train.num_stepz=3', '--workdir=w')
  _one_line_error(done, 'unknown config key --config.train.num_stepz', 'did you mean --config.train.num_steps?')
  done = launcher('--config=configs/amr_stage1.py', '--config.trian.num_steps=3', '--workdir=w')
  _one_line_error(done, 'did you mean --config.train.num_steps?')


def test_missing_config_file_lists_the_configs(launcher):
  done = launcher('--config=configs/amr_stage9.py', '--workdir=w')
  _one_line_error(done, 'config file not found: --config=configs/amr_stage9.py', 'amr_stage1.py',
                  'did you mean --config=configs/amr_stage')


def test_unknown_config_argument(launcher):
  done = launcher('--config=configs/amr_stage1.py:tyny', '--workdir=w')
  _one_line_error(done, "unknown config argument 'tyny'", 'amr_stage1.py')
  own = launcher.dir / 'own.py'
  done = launcher(f'--config={own}:tyny', '--workdir=w')
  _one_line_error(done, f"{os.path.relpath(own, REPO)}: unknown config argument 'tyny'", 'did you mean',
                  ':tiny?')


@pytest.mark.parametrize('flag, needles', [
    ('--config.train.num_steps=abc', ['bad value for --config.train.num_steps=abc', 'expected an int (now 0)']),
    ('--config.train.num_steps=3.5', ['bad value for --config.train.num_steps=3.5', 'expected an int']),
    ('--config.train.overwrite=yes', ['bad value for --config.train.overwrite=yes', 'expected true or false']),
    ('--config.train=3', ['bad value for --config.train=3', 'a config section']),
])
def test_bad_flag_value(launcher, flag, needles):
  _one_line_error(launcher('--config=configs/amr_stage1.py', flag, '--workdir=w'), *needles)


def test_unknown_or_missing_flags(launcher):
  _one_line_error(launcher('--config=configs/amr_stage1.py', '--workdr=w'),
                  'unknown flag --workdr (did you mean --workdir?)')
  _one_line_error(launcher('--confg.train.num_steps=3', '--config=configs/amr_stage1.py', '--workdir=w'),
                  'did you mean --config.train.num_steps?')
  _one_line_error(launcher('--config=configs/amr_stage1.py'), 'missing required flag --workdir')


def test_config_that_raises_is_one_line(launcher):
  done = launcher(f'--config={launcher.dir / "broken.py"}', '--workdir=w')
  _one_line_error(done, 'broken.py', "NameError: name 'undefined_name' is not defined")


def test_good_flags_still_parse(launcher):
  done = launcher('--config=configs/amr_stage1.py:tiny', '--config.train.num_steps=7', '--workdir=w')
  assert done.returncode == 0 and done.stdout.strip() == 'num_steps 7', done.stderr


def test_config_help_lists_keys_values_and_meanings(launcher):
  done = launcher('--config=configs/amr_stage1.py:tiny', '--config.train.num_steps=9', '--config_help')
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  assert lines[0].startswith('# --config=configs/amr_stage1.py:tiny:')
  by_key = {l.split('=')[0].strip(): l for l in lines[1:]}
  assert by_key['train.num_steps'].split('#')[0].split('=')[1].strip() == '9'        # the overridden value
  assert '# >0 overrides epochs' in by_key['train.num_steps']                           # configs/common.py comment
  assert '# size of the unused TrainablePositionalEncoding table' in by_key['model.max_q_l']   # model_config
  assert '#' not in by_key['data.max_q_l']          # the model's comment is not borrowed by another section
  assert "'splice_online'" in by_key['data.augment'] and 'Splice/Boost' in by_key['data.augment']
  own = launcher(f'--config={launcher.dir / "own.py"}', '--config_help')
  assert own.returncode == 0, own.stderr
  assert 'train.num_steps = 300  # optimiser steps of the run' in own.stdout      # HELP wins over the comment
  assert 'train.log_every = 10  # steps between log lines' in own.stdout


def test_config_help_without_config_is_one_line(launcher):
  _one_line_error(launcher('--config_help'), '--config_help lists the keys of a config: pass --config=FILE')


def test_help_mentions_config_help(launcher):
  done = launcher('--help')
  assert '--[no]config_help: Print every key of the --config file' in done.stdout


def test_tf_noise_switches_are_set_before_tensorflow():
  code = ('import os; from launch import _cli; '
          'print(os.environ["TF_CPP_MIN_LOG_LEVEL"], os.environ["TF_ENABLE_ONEDNN_OPTS"])')
  env = {k: v for k, v in os.environ.items() if not k.startswith('TF_')}
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO, env=env,
                        timeout=60)
  assert done.stdout.split() == ['2', '0'], done.stderr


def test_comment_meanings_of_section_functions(tmp_path):
  source = tmp_path / 'cfg.py'
  source.write_text(textwrap.dedent('''
      def model_config():
        m = ml_collections.ConfigDict()
        m.hidden_dim = 64   # width of every layer
        return m

      def flash_config():
        return section(
            kernel=5,        # scorer kernel
        )

      def get_config(arg=''):
        c = ml_collections.ConfigDict()
        c.model = model_config()
        c.flash = flash_config()
        c.train.num_steps = 0  # >0 overrides epochs
        # a comment line alone is not a meaning
        c.seed = 1
        c.data.update(dict(
            max_windows=32,   # every GT window
        ))
        c.after = 2   # back at the top level
        return c
  '''))
  meanings = _cli.comment_meanings([source])
  assert meanings['model.hidden_dim'] == 'width of every layer'
  assert meanings['flash.kernel'] == 'scorer kernel'
  assert meanings['train.num_steps'] == '>0 overrides epochs'
  assert 'seed' not in meanings
  assert meanings['data.max_windows'] == 'every GT window' and meanings['after'] == 'back at the top level'


@pytest.mark.parametrize('args, needles', [
    (['--config=configs/amr_stage1.py:tyny', '--workdir=/nonexistent/w'], ["unknown config argument 'tyny'"]),
])
def test_real_train_script_unknown_config_argument(args, needles):
  done = subprocess.run([sys.executable, 'launch/train.py', *args], capture_output=True, text=True, cwd=REPO,
                        timeout=120)
  _one_line_error(done, *needles)
  assert not pathlib.Path('/nonexistent/w').exists()


def test_real_train_script_config_help():
  done = subprocess.run([sys.executable, 'launch/train.py', '--config=configs/flashmmr.py:tiny', '--config_help'],
                        capture_output=True, text=True, cwd=REPO, timeout=120)
  assert done.returncode == 0, done.stderr
  assert 'train.overwrite' in done.stdout and 'model.hidden_dim' in done.stdout
  assert 'oneDNN' not in done.stderr
