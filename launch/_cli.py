"""Shared bits of the launch scripts: one-line errors instead of tracebacks for bad input, config help, tables.

Every script calls `run(main)`: bad flags, config files, config keys/values and expected failures (bad data,
busy or incompatible workdirs, disk faults) exit 1 with one reason line; `--config_help` lists a config's keys.
"""
import os
import sys

# TensorFlow / XLA start-up noise; only effective before TensorFlow is imported, so scripts import _cli first.
# oneDNN only changes TF's own math, and the input pipeline does none (tf.numpy_function only).
for _key, _value in (('TF_CPP_MIN_LOG_LEVEL', '2'), ('TF_ENABLE_ONEDNN_OPTS', '0'), ('GRPC_VERBOSITY', 'ERROR')):
  os.environ.setdefault(_key, _value)

import difflib  # noqa: E402
import importlib.util  # noqa: E402
import inspect  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import threading  # noqa: E402
import types  # noqa: E402
from typing import Any, Dict, List, Optional  # noqa: E402

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from amr_jax import jax_setup  # noqa: E402  (loads no jax until the cache is enabled)

EXPECTED_ERRORS = (FileNotFoundError, ValueError, KeyError, RuntimeError, OSError)
PROJECT_ERRORS = ('FeatureError', 'AnnotationError', 'TrainingError', 'SubmissionError', 'InputError', 'DataError',
                  'WorkdirError', 'CheckpointError', 'ConfigArgError')
REPO = pathlib.Path(__file__).resolve().parents[1]
EXIT_GRACE_S = 20   # after a reported error, the process exits even if a library thread still waits

flags.DEFINE_boolean('config_help', False, 'Print every key of the --config file with its value and meaning '
                     '(from the config\'s HELP dict or the comment beside the key), then exit.')


class _UsageError(Exception):
  """A command-line mistake, reported as one line."""


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)
  _exit_watchdog()
  sys.exit(1)


def _exit_watchdog(seconds: float = EXIT_GRACE_S) -> None:
  """Ends the process if interpreter shutdown blocks on a library's non-daemon thread (no silent hang)."""
  timer = threading.Timer(seconds, lambda: os._exit(1))  # pylint: disable=protected-access
  timer.daemon = True
  timer.start()


# ----------------------------------------------------------------------------------------------------
# Config flags
# ----------------------------------------------------------------------------------------------------
def config_flag_names(flag_values=flags.FLAGS) -> List[str]:
  """Names of the flags defined with config_flags.DEFINE_config_file."""
  return [name for name, flag in flag_values._flags().items()  # pylint: disable=protected-access
          if type(flag.parser).__name__ == 'ConfigFileFlagParser' and name == flag.name]


def _flag_arg(argv: List[str], name: str) -> Optional[str]:
  """The value given to --name on the command line (last one wins), or None."""
  value = None
  for i, arg in enumerate(argv):
    for prefix in (f'--{name}=', f'-{name}='):
      if arg.startswith(prefix):
        value = arg[len(prefix):]
    if arg in (f'--{name}', f'-{name}') and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _overrides(argv: List[str], name: str) -> List[tuple]:
  """(dotted path, value or None) of every --name.path[=value] override on the command line."""
  out = []
  for arg in argv:
    m = re.match(rf'^--?(?:no)?{re.escape(name)}\.([^=]+)(?:=(.*))?$', arg)
    if m:
      out.append((m.group(1), m.group(2)))
  return out


def _config_files_near(path: str) -> List[str]:
  directory = pathlib.Path(path).parent if pathlib.Path(path).parent.is_dir() else pathlib.Path('configs')
  found = []
  try:
    for candidate in sorted(directory.glob('*.py')):
      try:
        if 'def get_config' in candidate.read_text(encoding='utf-8'):
          found.append(str(candidate))
      except OSError:
        continue
  except OSError:
    pass
  return found


def check_config_file(spec: str, flag: str = 'config') -> None:
  """Raises _UsageError when --flag=PATH[:ARG] names no file, listing the config files nearby."""
  path = spec.split(':', 1)[0]
  if path and os.path.isfile(path):
    return
  nearby = _config_files_near(path)
  close = difflib.get_close_matches(path, nearby, n=1, cutoff=0.6)
  listing = ', '.join(os.path.basename(p) for p in nearby)
  where = f' ({os.path.dirname(nearby[0]) or "."}/ has {listing})' if nearby else ''
  hint = f'; did you mean --{flag}={close[0]}{spec[len(path):]}?' if close else ''
  raise _UsageError(f'config file not found: --{flag}={spec}{where}{hint}')


def _walk_missing(config: Any, path: str) -> Optional[str]:
  """None when `path` exists in `config`, else a description of the first missing part with a suggestion."""
  node, done = config, []
  for part in path.split('.'):
    keys = list(node.keys()) if hasattr(node, 'keys') else []
    if part not in keys:
      close = difflib.get_close_matches(part, keys, n=1, cutoff=0.6)
      prefix = '.'.join(done)
      if close:
        rest = path.split('.')[len(done) + 1:]
        fixed = '.'.join(done + [close[0]] + rest)
        return f'did you mean {fixed}?'
      return f'{prefix or "the config"} has ' + (', '.join(sorted(keys)[:12]) if keys else 'no keys')
    node = node[part]
    done.append(part)
  return None


def _leaf(config: Any, path: str) -> Any:
  node = config
  for part in path.split('.'):
    node = node[part]
  return node


def _kind(current: Any, flag_path: str = '--config.<section>') -> str:
  """'true or false' / 'an int (now 300)' / 'a config section' for a config value."""
  if isinstance(current, bool):
    return f'true or false (now {current})'
  if hasattr(current, 'keys'):
    return f'a config section (set its keys one by one, e.g. {flag_path}.{next(iter(current.keys()), "key")}=...)'
  if current is None:
    return 'another value'
  name = type(current).__name__
  article = 'an' if name[0] in 'aeiou' else 'a'
  return f'{article} {name} (now {current!r})'


def _raised_in(error: BaseException, path: str) -> bool:
  """Whether a frame of `error`'s traceback runs the file `path`."""
  target = os.path.abspath(path)
  tb = error.__traceback__
  while tb is not None:
    if os.path.abspath(tb.tb_frame.f_code.co_filename) == target:
      return True
    tb = tb.tb_next
  return False


def _root_cause(error: BaseException) -> BaseException:
  seen, cause = set(), error
  while True:
    nxt = cause.__cause__ or cause.__context__
    if nxt is None or id(nxt) in seen:
      return cause
    seen.add(id(cause))
    cause = nxt


def _one_line(text: str) -> str:
  lines = [l.strip() for l in str(text).strip().splitlines() if l.strip()]
  return lines[0] if lines else ''


def _load_config_quietly(spec: str) -> Any:
  """get_config(arg) of a config file spec 'path[:arg]' (None on any failure)."""
  path, _, arg = spec.partition(':')
  try:
    module = _load_module(path)
    return module.get_config(arg) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except
    return None


def describe_flag_error(error: BaseException, argv: List[str], flag_values=flags.FLAGS) -> str:
  """One line for a flag-parsing failure: unknown config key, bad value, bad config file/argument, ..."""
  text = str(error)
  for name in config_flag_names(flag_values):
    spec = _flag_arg(argv, name)
    # A failing config file (unknown config argument, an exception in get_config): its own message.
    if spec is not None and (f'--{name}={spec}' in text or 'Error whilst parsing config file' in text):
      root = _root_cause(error)
      message = _one_line(root)
      if 'Error whilst parsing config file' in message or not message:
        message = _one_line(text.split('Traceback')[0])
      if spec.split(':', 1)[0] not in message:
        kind = '' if isinstance(root, ValueError) else f'{type(root).__name__}: '
        message = f'--{name}={spec}: {kind}{message}'
      return message
    overrides = _overrides(argv, name)
    if not overrides:
      continue
    config = None
    try:
      config = flag_values[name].value
      config.keys()
    except Exception:  # pylint: disable=broad-except
      config = _load_config_quietly(spec) if spec else None
    if config is None:
      continue
    # An unknown key (ml_collections raises AttributeError/KeyError mid-parse).
    for path, value in overrides:
      missing = _walk_missing(config, path)
      if missing:
        missing = missing.replace('did you mean ', f'did you mean --{name}.')
        return f'unknown config key --{name}.{path} ({missing}); --config_help lists every key'
    # A value of the wrong type.
    for path, value in overrides:
      if f'--{name}.{path}=' in text or f"'{path}'" in text:
        try:
          current = _leaf(config, path)
        except Exception:  # pylint: disable=broad-except
          current = None
        detail = _one_line(_root_cause(error)).strip('()')
        expected = _kind(current, f'--{name}.{path}')
        return f'bad value for --{name}.{path}={value}: expected {expected}; {detail}'
  m = re.search(r'Flag --(\w+) must have a value other than None', text)
  if m:
    flag = flag_values[m.group(1)] if m.group(1) in flag_values else None
    return f'missing required flag --{m.group(1)}' + (f' ({flag.help})' if flag is not None and flag.help else '')
  if isinstance(error, flags.UnrecognizedFlagError):
    flag = str(getattr(error, 'flagname', '') or '')
    head = flag.split('.', 1)[0]
    names = [n for n in flag_values if len(n) > 1]
    close = difflib.get_close_matches(head, names, n=1, cutoff=0.6)
    if close:
      fixed = close[0] + flag[len(head):]
      return f'unknown flag --{flag} (did you mean --{fixed}?); --help lists the flags'
    return f'unknown flag --{flag}; --help lists the flags'
  root = _root_cause(error)
  line = _one_line(text) or _one_line(root)
  if isinstance(error, flags.Error):
    return line
  for name in config_flag_names(flag_values):   # an exception raised while the config file ran
    spec = _flag_arg(argv, name)
    if spec and _raised_in(error, spec.split(':', 1)[0]):
      return f'--{name}={spec}: the config raised {type(root).__name__}: {_one_line(root)}'
  return f'{type(root).__name__}: {_one_line(root)}'


def parse_flags(argv: List[str], flag_values=flags.FLAGS) -> List[str]:
  """absl flag parsing with one-line errors (the `flags_parser` of `run`), and --config_help."""
  argv = list(argv)
  want_help = any(re.match(r'^--?config_help(=(1|true|True|yes))?$', a) for a in argv)
  if 'config_help' in flag_values and argv:   # list it in the script's own --help
    flag_values.register_key_flag_for_module(argv[0], flag_values['config_help'])
  try:
    for name in config_flag_names(flag_values):
      spec = _flag_arg(argv, name)
      if spec is not None:
        check_config_file(spec, name)
    try:
      rest = flag_values(argv)
    except flags.IllegalFlagValueError as e:
      if not (want_help and 'must have a value other than None' in str(e)):
        raise
      rest = argv[:1]
    except Exception as e:  # pylint: disable=broad-except
      raise _UsageError(describe_flag_error(e, argv, flag_values)) from e
    for name in config_flag_names(flag_values):
      try:
        config = flag_values[name].value
        if config is not None:
          config.keys()   # config_flags reports a config file that failed to load only when it is read
      except Exception as e:  # pylint: disable=broad-except
        raise _UsageError(f'--{name}={_flag_arg(argv, name)}: cannot load the config '
                          f'({type(_root_cause(e)).__name__}: {_one_line(_root_cause(e))})') from e
  except (_UsageError, flags.Error) as e:
    if os.environ.get('AMR_JAX_DEBUG'):
      raise
    message = str(e) if isinstance(e, _UsageError) else describe_flag_error(e, argv, flag_values)
    _fail(message)
  if want_help:
    names = config_flag_names(flag_values)
    if not names:
      _fail('this script takes no --config file')
    for name in names:
      if flag_values[name].value is None:
        _fail(f'--config_help lists the keys of a config: pass --{name}=FILE[:ARG] too')
      print(config_help(flag_values[name].value, _flag_arg(argv, name) or '', flag=name))
    sys.exit(0)
  return rest


# ----------------------------------------------------------------------------------------------------
# --config_help
# ----------------------------------------------------------------------------------------------------
def _load_module(path: str) -> types.ModuleType:
  name = '_cli_config_' + re.sub(r'\W', '_', os.path.abspath(path))
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise ImportError(f'{path}: not a python file')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _source_files(module: types.ModuleType, limit: int = 24) -> List[pathlib.Path]:
  """The config file, then the repo files whose modules/functions it uses (transitively, breadth first)."""
  files: List[pathlib.Path] = []
  queue = [module]
  seen = set()
  while queue and len(files) < limit:
    mod = queue.pop(0)
    try:
      path = pathlib.Path(inspect.getsourcefile(mod) or '').resolve()
    except TypeError:
      continue
    outside = REPO not in path.parents or '.venv' in path.parts
    if path in seen or not path.is_file() or (outside and mod is not module):
      continue
    seen.add(path)
    files.append(path)
    for value in list(vars(mod).values()):
      if isinstance(value, types.ModuleType):
        queue.append(value)
      elif inspect.isfunction(value) or inspect.isclass(value):
        owner = sys.modules.get(getattr(value, '__module__', ''))
        if owner is not None:
          queue.append(owner)
  return files


_DEF = re.compile(r'^def\s+(\w+)\s*\(')
_ASSIGN = re.compile(r'^\s*(?P<lhs>[A-Za-z_][\w.]*)\s*=\s*(?P<rhs>[^#]*?)\s*#\s*(?P<comment>\S.*)$')
_SECTION_OF = re.compile(r'^\s*(?P<lhs>[A-Za-z_][\w.]*)\s*=\s*(?:[\w.]+\.)?(?P<func>\w+)\(')
_UPDATE = re.compile(r'^\s*\w+\.(?P<section>[\w.]+)\.update\((?:dict\()?\s*$')   # c.data.update(dict(


def comment_meanings(paths: List[pathlib.Path]) -> Dict[str, str]:
  """Dotted config key -> the comment on its assignment line, parsed simply from the config sources.

  `c.train.num_steps = 0  # >0 overrides epochs` -> 'train.num_steps'; inside `def model_config` (assigned as
  `c.model = model_config(...)`), `m.hidden_dim = 64  # ...` and `hidden_dim=64,  # ...` -> 'model.hidden_dim'.
  Comment-only lines are not used.
  """
  texts = []
  for path in paths:
    try:
      texts.append(path.read_text(encoding='utf-8').splitlines())
    except OSError:
      continue
  # Which section each *_config function builds: `c.model = model_config(..)` -> model; `d = common.x_config()`
  # inside data_config -> x_config builds what data_config builds.
  section: Dict[str, str] = {'get_config': '', 'base_config': ''}
  alias: Dict[str, str] = {}
  for lines in texts:
    func = None
    for line in lines:
      m = _DEF.match(line)
      if m:
        func = m.group(1)
        continue
      m = _SECTION_OF.match(line)
      if not m or func is None:
        continue
      lhs, callee = m.group('lhs'), m.group('func')
      if '.' in lhs:
        var, rest = lhs.split('.', 1)
        if var in ('c', 'config', 'cfg') and callee not in section:
          section[callee] = rest
      else:
        alias.setdefault(callee, func)
  for _ in range(4):
    for callee, caller in alias.items():
      if callee not in section and caller in section:
        section[callee] = section[caller]
  meanings: Dict[str, str] = {}
  for lines in texts:
    func = None
    update = None      # inside `c.data.update(dict(` ... `))`: kwargs belong to that section
    for line in lines:
      m = _DEF.match(line)
      if m:
        func, update = m.group(1), None
        continue
      m = _UPDATE.match(line)
      if m:
        update = m.group('section')
        continue
      if update is not None and line.strip().startswith(')'):
        update = None
        continue
      if line.strip().startswith('#'):
        continue
      m = _ASSIGN.match(line)
      if not m:
        continue
      lhs, comment = m.group('lhs'), m.group('comment').strip()
      prefix = update if update is not None else (section.get(func, None) if func else None)
      if '.' in lhs:
        rel = lhs.split('.', 1)[1]
        keys = [rel] + ([f'{prefix}.{rel}'] if prefix else [])
      elif prefix:
        keys = [f'{prefix}.{lhs}']
      else:
        continue
      for key in keys:
        meanings.setdefault(key, comment)
  return meanings


def _flatten(config: Any, prefix: str = '') -> List[tuple]:
  items = []
  for key in config.keys():
    value = config[key]
    name = f'{prefix}{key}'
    if hasattr(value, 'keys') and not isinstance(value, str) and len(list(value.keys())):
      items.extend(_flatten(value, name + '.'))
    else:
      items.append((name, value))
  return items


def config_help(config: Any, spec: str, flag: str = 'config') -> str:
  """Every key of `config` with its value and a one-line meaning: the config module's `HELP` dict first, then the
  comment beside the key in the config's source files (see `comment_meanings`)."""
  path = spec.split(':', 1)[0]
  meanings: Dict[str, str] = {}
  help_dict: Dict[str, str] = {}
  try:
    module = _load_module(path)
    help_dict = dict(getattr(module, 'HELP', {}) or {})
    meanings = comment_meanings(_source_files(module))
  except Exception:  # pylint: disable=broad-except
    pass
  items = _flatten(config)
  width = min(max((len(k) for k, _ in items), default=10), 44)
  lines = [f'# --{flag}={spec}: {len(items)} keys; change any with --{flag}.KEY=VALUE']
  for key, value in items:
    meaning = help_dict.get(key) or meanings.get(key, '')
    shown = repr(value) if isinstance(value, str) else str(value)
    if len(shown) > 60:
      shown = shown[:57] + '...'
    lines.append(f'{key:<{width}} = {shown}' + (f'  # {meaning}' if meaning else ''))
  return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------------
# Running a script
# ----------------------------------------------------------------------------------------------------
def run(main, jax_cache: bool = False) -> None:
  """absl.app.run(main) with one-line errors; `jax_cache` turns on the persistent XLA cache first."""

  def guarded(argv):
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every checkpoint operation at INFO
    if jax_cache and os.environ.get('AMR_JAX_NO_CACHE') != '1':
      jax_setup.enable_compilation_cache()
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      if not isinstance(e, EXPECTED_ERRORS) and type(e).__name__ not in PROJECT_ERRORS:
        raise
      # bad user input: one line, no traceback
      if os.environ.get('AMR_JAX_DEBUG'):
        raise
      msg = str(e).strip()
      first, _, rest = msg.partition('\n')
      print(f'error: {type(e).__name__}: {first}', file=sys.stderr)
      if rest:
        print(rest, file=sys.stderr)
      sys.stderr.flush()
      _exit_watchdog()
      sys.exit(1)

  app.run(guarded, flags_parser=parse_flags)


def metrics_table(metrics: dict) -> str:
  keys = [k for k, v in metrics.items() if isinstance(v, (int, float))]
  width = max((len(k) for k in keys), default=10)
  return '\n'.join(f'{k:<{width}}  {metrics[k]}' for k in keys)
