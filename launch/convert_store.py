"""Converts a feature directory into a bounded-memory ArrayRecord store (resumable), or verifies one.

Usage: launch/convert_store.py --features=DIR --annotations=F[,G] --out=DIR [--shard_mb=N] [--verify_only]
[--deep]. Rerunning an interrupted conversion resumes it. Exit 0 when the store is sound, 1 otherwise.
"""
import sys

from absl import flags

from launch import _cli
from amr_jax.data import array_store
from amr_jax.data import convert_store

_FEATURES = flags.DEFINE_string("features", None, "Source feature directory (QVHighlights / lighthouse layout, "
                                "or a planted store).")
_ANNOTATIONS = flags.DEFINE_multi_string("annotations", [], "Annotation file(s) whose vids / qids to convert; "
                                         "repeat the flag or separate paths with commas.")
_OUT = flags.DEFINE_string("out", None, "The array store directory to write (or resume, or verify).")
_SHARD_MB = flags.DEFINE_integer("shard_mb", convert_store.DEFAULT_SHARD_BYTES >> 20, "Shard size in MiB.")
_VIDEO_SUFFIX = flags.DEFINE_string("video_suffix", "", "'_aug' converts the augmented video directories.")
_COMPRESSION = flags.DEFINE_enum("compression", "uncompressed", list(convert_store.COMPRESSIONS),
                                 "ArrayRecord compression (float features barely compress).")
_VERIFY_ONLY = flags.DEFINE_bool("verify_only", False, "Only verify --out (manifest, index, sha256 of every "
                                 "shard, record counts); converts nothing.")
_DEEP = flags.DEFINE_bool("deep", False, "Verification also decodes every record and checks its shape.")


def _usage(message: str) -> None:
  print(f"error: convert_store: {message}", file=sys.stderr)
  sys.exit(1)


def _verify(out: str) -> None:
  problems = convert_store.verify(out, deep=_DEEP.value)
  for problem in problems:
    print(problem, file=sys.stderr)
  if problems:
    _usage(f"{len(problems)} problem(s) in {out}")
  manifest = array_store.load_manifest(out)
  size = sum(int(s["bytes"]) for s in manifest["shards"])
  print(f"convert_store: {out} is sound: {manifest['num_videos']} videos, {manifest['num_texts']} texts, "
        f"{len(manifest['shards'])} shards, {size / 2**30:.2f} GiB (video {manifest['video_dim']} wide, "
        f"text {manifest['text_dim']} wide)")


def main(argv):
  if len(argv) > 1:
    _usage(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _OUT.value:
    _usage("--out is required")
  if _VERIFY_ONLY.value:
    _verify(_OUT.value)
    return
  if not _FEATURES.value:
    _usage("--features is required (or --verify_only)")
  if not _ANNOTATIONS.value:
    _usage("--annotations is required")
  if _SHARD_MB.value < 1:
    _usage("--shard_mb must be >= 1")
  manifest = convert_store.convert(_FEATURES.value, _ANNOTATIONS.value, _OUT.value,
                                   shard_bytes=_SHARD_MB.value << 20, video_suffix=_VIDEO_SUFFIX.value,
                                   compression=_COMPRESSION.value)
  run = manifest["conversion"]
  size = sum(int(s["bytes"]) for s in manifest["shards"])
  print(f"convert_store: wrote {manifest['num_videos']} videos and {manifest['num_texts']} texts to {_OUT.value}: "
        f"{len(manifest['shards'])} shards ({run['kept_shards']} kept from an earlier run, {run['written_shards']} "
        f"written), {size / 2**30:.2f} GiB in {run['seconds']:.1f}s")
  for entry in manifest["skipped"][:20]:
    print(f"skipped {entry['kind']} {entry['key']}: {entry['error']}", file=sys.stderr)
  if manifest["skipped"]:
    print(f"warning: {len(manifest['skipped'])} record(s) skipped (missing or unreadable source files); "
          f"validation names them, --config.data.drop_bad=True drops their samples", file=sys.stderr)
  if _DEEP.value:
    _verify(_OUT.value)


if __name__ == "__main__":
  _cli.run(main)
