"""Benchmark suite `scale`: the full QVHighlights train + val at the real widths through the ArrayRecord source.

Plants the store for the shipped annotations, converts it (timed), then a fresh process reads it as stage 1 does
(online Splice, batch 32, tf.data) and reports its peak RSS and sustained batches/s against the step's demand.
"""
from __future__ import annotations

import collections
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import time
from amr_jax.data import annotations, array_store, convert_store, features, planted
from data_pipelines import batches
from data_pipelines import stream_cache
from data_pipelines.examples import PadSpec
from amr_jax.projects import moment_task
from amr_jax.projects.amr import augment

ROOT = pathlib.Path(__file__).resolve().parents[2]
QVH = ROOT / 'data' / 'annotations' / 'qvhighlights'
TRAIN = QVH / 'highlight_train_release.jsonl'
VAL = QVH / 'highlight_val_release.jsonl'
STEP_S = 0.8              # the stage-1 step's demand: ~1 batch per 0.8 s (issue 18)
TARGET_RATIO = 5.0        # sustained batches/s must be >= 5x the demand
RSS_TARGET_GB = 4.0
AUG_PASSES = 10           # configs/amr_common.py data.aug_passes (stage 1)
DISK_MARGIN = 1.15        # free disk needed: (planted + converted) bytes x this


def estimate_bytes(records, dims: str = 'real', max_v_l: int = 75) -> int:
  """Decoded float32 bytes of the planted store of `records` (videos + texts), from the annotations alone."""
  d = planted.planted_dims(dims)
  video_width = d.slowfast + max(d.clip_layers, 1) * d.clip
  text_width = max(d.text_layers, 1) * d.text
  by_vid = collections.defaultdict(list)
  queries = {}
  for r in records:
    by_vid[r.vid].append(r)
    queries.setdefault(r.qid, r.query)
  clips = sum(planted.video_length(v, max_v_l) for v in by_vid.values())
  tokens = sum(min(len(planted.query_words(q)) + 2, planted.MAX_TEXT_TOKENS) for q in queries.values())
  return 4 * (clips * video_width + tokens * text_width)


def _dir_bytes(path: str) -> int:
  total = 0
  for base, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(base, f)) for f in files)
  return total


def _largest_fitting(records, free_bytes: int, dims: str):
  """The longest prefix of records whose planted + converted stores fit in `free_bytes` (with the margin)."""
  lo, hi = 0, len(records)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if 2 * estimate_bytes(records[:mid], dims) * DISK_MARGIN <= free_bytes:
      lo = mid
    else:
      hi = mid - 1
  return records[:lo]


def run(root: str, num_train: int = 0, num_val: int = 0, dims: str = 'real', *, steps: int = 40, batch: int = 32,
        shard_mb: int = 256, passes: int = AUG_PASSES, cache_mb: int = 512, reuse_planted: bool = True,
        keep: bool = True, step_s: float = STEP_S, cold_cache: bool = True, baseline_records: int = 1000) -> dict:
  """Plants, converts and reads the store; prints one line per number and returns them.

  Args:
    root: working directory (planted/ and array_store/ go under it; needs ~2x the store on disk).
    num_train, num_val: the first rows of the shipped train / val files (0 = all rows).
    dims: 'real' (SlowFast 2304 + CLIP 4x768, text 4x512) or 'tiny'.
    steps: timed batches after one warm-up batch.
    batch: global batch size.
    shard_mb: shard size of the conversion.
    passes: online Splice passes (stage 1's data.aug_passes).
    cache_mb: the reading process's LRU budget.
    reuse_planted: keep an existing planted store of the same records (planting is not what is measured).
    keep: leave the stores on disk (else both are deleted at the end).
    step_s: the step's demand, seconds per batch.
    cold_cache: also time a reader whose store pages were dropped from the page cache (disk-bound reads).
    baseline_records: also time the in-memory `FeatureCache` and the stream on the first N train records, one
      after the other (the same machine load), for the relative cost; 0 = skip.
  """
  train = annotations.load_annotations(TRAIN)
  val = annotations.load_annotations(VAL)
  train, val = train[:num_train or None], val[:num_val or None]
  records = train + val
  os.makedirs(root, exist_ok=True)
  planted_dir = os.path.join(root, 'planted')
  store_dir = os.path.join(root, 'array_store')
  full_bytes = estimate_bytes(records, dims)
  reusable = _planted_matches(planted_dir, records, dims)
  shutil.rmtree(store_dir, ignore_errors=True)
  if not reusable:
    shutil.rmtree(planted_dir, ignore_errors=True)
  free = shutil.disk_usage(root).free + (_dir_bytes(planted_dir) if reusable else 0)
  measured = records
  if 2 * full_bytes * DISK_MARGIN > free:   # measure on the largest prefix that fits, extrapolate linearly
    measured = _largest_fitting(records, free, dims)
    if not measured:
      raise OSError(f'{root}: {free / 2**30:.1f} GiB free, too little for any subset')
    reusable = _planted_matches(planted_dir, measured, dims)
    if not reusable:
      shutil.rmtree(planted_dir, ignore_errors=True)
  measured_train = measured[:min(len(measured), len(train))]   # measured is a prefix of train + val
  scale = full_bytes / estimate_bytes(measured, dims)
  print(f'scale: {len(records)} records ({len(train)} train + {len(val)} val), estimated {full_bytes / 2**30:.2f} '
        f'GiB of features; {free / 2**30:.1f} GiB free under {root}'
        + (f'; measuring on the first {len(measured)} records (x{scale:.2f} extrapolated)' if measured is not records
           else ''), flush=True)

  t0 = time.perf_counter()
  if not reusable:
    planted.write_planted_store(measured, planted_dir, seed=0, dims=dims)
  planted_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  manifest = convert_store.convert(planted_dir, measured, store_dir, shard_bytes=shard_mb << 20)
  convert_s = time.perf_counter() - t0
  disk_bytes = sum(int(s['bytes']) for s in manifest['shards']) + int(manifest['index']['bytes'])
  reader = _read_in_child(store_dir, num_train=len(measured_train), steps=steps, batch=batch, passes=passes,
                          cache_mb=cache_mb)
  cold = (_read_in_child(store_dir, num_train=len(measured_train), steps=steps, batch=batch, passes=passes,
                         cache_mb=cache_mb, cold=True) if cold_cache else None)
  baseline = None
  if baseline_records:   # the in-memory cache and the stream on the same small subset, one after the other
    n = min(baseline_records, len(measured_train))
    baseline = {mode: _read_in_child(store_dir, num_train=n, steps=steps, batch=batch, passes=passes,
                                     cache_mb=cache_mb, **extra)
                for mode, extra in (('memory', dict(memory_dir=planted_dir)), ('stream', {}))}
  per_s = reader['batches_per_s']
  out = dict(
      suite='scale', dims=dims, records=len(records), measured_records=len(measured),
      measured_train_records=len(measured_train), extrapolation=scale if measured is not records else 1.0,
      videos=manifest['num_videos'], texts=manifest['num_texts'], shards=len(manifest['shards']),
      planted_s=planted_s if not reusable else None, source_gib=_dir_bytes(planted_dir) / 2**30,
      convert_s=convert_s, convert_s_full=convert_s * (scale if measured is not records else 1.0),
      convert_mib_per_s=disk_bytes / convert_s / 2**20,
      disk_gib=disk_bytes / 2**30, disk_gib_full=disk_bytes * (scale if measured is not records else 1.0) / 2**30,
      in_memory_cache_gib=reader['in_memory_cache_gib'], open_s=reader['open_s'],
      sampler_build_s=reader['sampler_build_s'], augmented_samples=reader['augmented_samples'],
      batch=batch, steps=steps, peak_rss_gib=reader['peak_rss_gib'], rss_after_imports_gib=reader['rss_imports_gib'],
      rss_target_gib=RSS_TARGET_GB, median_s=reader['median_s'], batches_per_s=per_s,
      samples_per_s=per_s * batch, step_s_assumed=step_s, ratio_to_step_demand=per_s * step_s,
      cpu_s_per_batch=reader['cpu_s_per_batch'], load_average=os.getloadavg()[0], cpus=os.cpu_count(),
      target_ratio=TARGET_RATIO, lru=reader['lru'])
  if cold is not None:   # the store's pages dropped from the page cache first: every record read from the disk
    out.update(cold_peak_rss_gib=cold['peak_rss_gib'], cold_median_s=cold['median_s'],
               cold_batches_per_s=cold['batches_per_s'], cold_ratio_to_step_demand=cold['batches_per_s'] * step_s)
  if baseline is not None:
    for mode, result in baseline.items():
      out.update({f'subset_{mode}_batches_per_s': result['batches_per_s'],
                  f'subset_{mode}_cpu_s_per_batch': result['cpu_s_per_batch'],
                  f'subset_{mode}_peak_rss_gib': result['peak_rss_gib']})
    out['subset_records'] = min(baseline_records, len(measured_train))
  for key, value in out.items():
    print(f'{key:>26}: {value:.3f}' if isinstance(value, float) else f'{key:>26}: {value}', flush=True)
  if not keep:
    shutil.rmtree(store_dir, ignore_errors=True)
    shutil.rmtree(planted_dir, ignore_errors=True)
  return out


def _planted_matches(planted_dir: str, records, dims: str) -> bool:
  """True when `planted_dir` holds a complete planted store of exactly these records' vids and qids."""
  meta_path = os.path.join(planted_dir, planted.META_FILE)
  if not os.path.isfile(meta_path):
    return False
  with open(meta_path, encoding='utf-8') as f:
    meta = json.load(f)
  return (meta.get('dims') == dims and meta.get('num_videos') == len({r.vid for r in records})
          and meta.get('num_queries') == len({r.qid for r in records}))


def _read_in_child(store_dir: str, **kwargs) -> dict:
  """Runs `reader_main` in a fresh interpreter (so its peak RSS is the reader's alone); returns its result."""
  job = os.path.join(store_dir, 'reader_job.json')
  with open(job, 'w', encoding='utf-8') as f:
    json.dump(dict(store_dir=store_dir, **kwargs), f)
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL='2')
  code = 'import sys; from amr_jax.benchmarks import scale_suite; scale_suite.reader_main(sys.argv[1])'
  proc = subprocess.run([sys.executable, '-c', code, job], env=env, cwd=str(ROOT), capture_output=True, text=True,
                        check=False)
  os.remove(job)
  if proc.returncode != 0:
    raise RuntimeError(f'scale reader failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def drop_page_cache(store_dir: str) -> None:
  """Asks the kernel to drop the cached pages of this store's files only (posix_fadvise DONTNEED)."""
  for name in os.listdir(store_dir):
    with open(os.path.join(store_dir, name), 'rb') as f:
      os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _rss_gib() -> float:
  with open('/proc/self/status', encoding='ascii') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 2**20
  return 0.0


def reader_main(job_path: str) -> None:
  """The reading process: stage-1 batches (online Splice) from the store through tf.data; prints one JSON line."""
  with open(job_path, encoding='utf-8') as f:
    job = json.load(f)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel,unused-import  (in the RSS baseline)
  del tf
  records = annotations.load_annotations(TRAIN)[:job['num_train']]
  rss_imports = _rss_gib()
  t0 = time.perf_counter()
  if job.get('memory_dir'):   # the in-memory baseline: every feature of the records read into RAM first
    store = features.FeatureStore(job['memory_dir'])
    cache = batches.FeatureCache(store, records)
    decoded = cache.nbytes
  else:
    if job.get('cold'):   # every read then comes from the disk (the checksums would read the shards back in)
      drop_page_cache(job['store_dir'])
    store = array_store.ArrayStore(job['store_dir'], verify='size' if job.get('cold') else 'all',
                                   cache_bytes=job['cache_mb'] << 20)
    cache = stream_cache.StreamCache(store, records)
    decoded = cache.decoded_nbytes
  open_s = time.perf_counter() - t0
  spec = PadSpec(video_dim=store.video_dim, text_dim=store.text_dim)
  split = batches.Split(records=records, cache=cache, spec=spec)
  t0 = time.perf_counter()
  split.augmented, split.num_augmented, split.infos = augment.make_online_sampler(
      records, cache.video, seed=0, passes=job['passes'])
  sampler_s = time.perf_counter() - t0
  steps, batch = job['steps'], job['batch']
  ds = batches.train_dataset(moment_task.MomentTrainData(split), seed=0, global_batch=batch, start_step=0,
                             num_steps=steps + 2)
  it = ds.as_numpy_iterator()
  next(it)   # warm-up (the probe batch of train_dataset was built too)
  times = []
  usage = resource.getrusage(resource.RUSAGE_SELF)
  start = time.perf_counter()
  for _ in range(steps):
    t = time.perf_counter()
    next(it)
    times.append(time.perf_counter() - t)
  total = time.perf_counter() - start
  end_usage = resource.getrusage(resource.RUSAGE_SELF)   # every thread's CPU: tf.data workers included
  cpu_s = (end_usage.ru_utime - usage.ru_utime) + (end_usage.ru_stime - usage.ru_stime)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB -> GiB
  print(json.dumps(dict(open_s=open_s, sampler_build_s=sampler_s, augmented_samples=split.num_augmented,
                        median_s=statistics.median(times), batches_per_s=steps / total, peak_rss_gib=peak,
                        cpu_s_per_batch=cpu_s / steps,
                        rss_imports_gib=rss_imports, in_memory_cache_gib=decoded / 2**30,
                        lru=store.cache.stats() if isinstance(store, array_store.ArrayStore) else None)))
