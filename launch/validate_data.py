"""Pre-flight check of annotations against a feature store: reports every problem, one line each.

Usage: launch/validate_data.py --annotations=F --features=DIR [--config=configs/X.py[:ARG]] [--drop_bad --out=F].
Exit 0 when clean (or with --drop_bad after writing the kept rows), 1 otherwise.
"""
import importlib.util
import sys
import time

from absl import app
from absl import flags

from amr_jax.data import annotations
from amr_jax.data import features
from amr_jax.data import validate

_ANNOTATIONS = flags.DEFINE_multi_string(
    "annotations", [], "Annotation file(s); repeat the flag or separate paths with commas.")
_FEATURES = flags.DEFINE_string("features", None, "Feature store root (QVHighlights or lighthouse layout).")
_CONFIG = flags.DEFINE_string("config", None, "Optional config file (configs/NAME.py[:ARG]); its data.max_v_l "
                              "and data.clip_len are used.")
_MAX_V_L = flags.DEFINE_integer("max_v_l", None, "Clips kept per video (default: the config's, else 75).")
_GRID_SEC = flags.DEFINE_float("grid_sec", None, "Grid of wrong_spans in seconds (default: the config's "
                               "data.clip_len, else 2).")
_DROP_BAD = flags.DEFINE_bool("drop_bad", False, "Write the records without problems to --out and exit 0.")
_OUT = flags.DEFINE_string("out", None, "With --drop_bad: where the kept rows go (jsonl).")


def _fail(message: str) -> None:
  print(f"validate_data: {message}", file=sys.stderr)
  sys.exit(1)


def _config_data():
  """The `data` section of --config (a python file with get_config([arg])), or None."""
  if not _CONFIG.value:
    return None
  path, _, arg = _CONFIG.value.partition(":")
  try:
    spec = importlib.util.spec_from_file_location("validate_data_config", path)
    if spec is None or spec.loader is None:
      raise ImportError("not a python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    _fail(f"cannot load --config={_CONFIG.value}: {type(e).__name__}: {e}")
  return getattr(config, "data", None)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _ANNOTATIONS.value:
    _fail("--annotations is required")
  if not _FEATURES.value:
    _fail("--features is required")
  if _DROP_BAD.value and not _OUT.value:
    _fail("--drop_bad needs --out")
  data = _config_data()
  max_v_l = _MAX_V_L.value or getattr(data, "max_v_l", None) or 75
  grid_sec = _GRID_SEC.value or getattr(data, "clip_len", None) or 2.0
  start = time.time()
  # Every unparsable row and every empty / missing file is a problem of its own, reported with the rest.
  records, problems = validate.load_checked(_ANNOTATIONS.value)
  unreadable = [p for p in problems if p.scope == validate.SCOPE_FILE and 'empty' not in p.message]
  if unreadable:   # a missing / unreadable annotation file: nothing to check against the store
    _fail('; '.join(str(p) for p in unreadable))
  try:
    store = features.FeatureStore(_FEATURES.value, max_v_l=max_v_l)
  except features.FeatureError as e:
    _fail(str(e))
  problems += validate.validate(records, store, max_v_l=max_v_l, grid_sec=grid_sec)
  for problem in problems:
    print(problem)
  print(f"{validate.summarize(records, problems)} [{store.layout.name} store {store.root}, "
        f"{time.time() - start:.1f}s]")
  if _DROP_BAD.value:
    if any(p.scope == validate.SCOPE_FILE for p in problems):
      _fail("an annotation file gave no records (see above); --drop_bad cannot drop that")
    kept, dropped = validate.drop_bad(records, problems)
    try:
      annotations.write_jsonl(kept, _OUT.value)
    except OSError as e:
      _fail(str(e))
    qids = ", ".join(str(r.qid) for r in dropped)
    print(f"kept {len(kept)} records in {_OUT.value}; dropped {len(dropped)}" + (f": qids {qids}" if qids else ""))
    sys.exit(0)
  sys.exit(1 if problems else 0)


if __name__ == "__main__":
  app.run(main)
