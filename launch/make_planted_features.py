"""Writes a planted feature store for every vid/qid of the given annotation files.

Usage: launch/make_planted_features.py --annotations=F [--annotations=G ...] --out=DIR [--dims=tiny|real]
[--seed=N] [--layout=qvh|lighthouse]. See docs/PLANTED.md for what the features contain.
"""
import sys
import time

from absl import app
from absl import flags

from amr_jax.data import annotations
from amr_jax.data import planted

_ANNOTATIONS = flags.DEFINE_multi_string(
    "annotations", [], "Annotation file(s); repeat the flag or separate paths with commas.")
_OUT = flags.DEFINE_string("out", None, "Output directory (the feature store root).")
_DIMS = flags.DEFINE_enum("dims", "tiny", ["tiny", "real"], "Feature widths: tiny (tests) or real (AMR).")
_SEED = flags.DEFINE_integer("seed", 0, "The one seed of the planted store.")
_LAYOUT = flags.DEFINE_enum("layout", "qvh", ["qvh", "lighthouse"], "Official QVHighlights or lighthouse layout.")
_MAX_V_L = flags.DEFINE_integer("max_v_l", 75, "Clips per video at most.")


def _fail(message: str) -> None:
  print(f"make_planted_features: {message}", file=sys.stderr)
  sys.exit(1)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _ANNOTATIONS.value:
    _fail("--annotations is required")
  if not _OUT.value:
    _fail("--out is required")
  if _MAX_V_L.value < 1:
    _fail("--max_v_l must be >= 1")
  start = time.time()
  try:
    records = annotations.load_many(_ANNOTATIONS.value)
    summary = planted.write_planted_store(records, _OUT.value, seed=_SEED.value, dims=_DIMS.value,
                                          layout=_LAYOUT.value, max_v_l=_MAX_V_L.value)
  except (annotations.AnnotationError, OSError, ValueError) as e:
    _fail(str(e))
  print(f"wrote {summary.num_videos} videos and {summary.num_queries} queries "
        f"({summary.num_true_spans} true spans, {summary.num_distractor_spans} distractor spans; "
        f"dims={_DIMS.value}, layout={_LAYOUT.value}, seed={_SEED.value}) to {summary.out_dir} "
        f"in {time.time() - start:.1f}s")
  if summary.qid_query_conflicts:
    print(f"warning: {len(summary.qid_query_conflicts)} qid(s) appear with different queries; the first was used "
          f"(e.g. qid {summary.qid_query_conflicts[0]})")


if __name__ == "__main__":
  app.run(main)
