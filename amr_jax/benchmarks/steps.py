"""Benchmark suites train1 / train2 / infer: the jitted AMR step on random inputs of the real shapes.

Warm-up (compile) is timed separately; then >= 10 timed calls with block_until_ready; FLOPs from XLA.
"""
from __future__ import annotations

import resource
import importlib.util
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.benchmarks.eval_suite import ANNOTATIONS
from amr_jax.data import annotations
from amr_jax.data.records import CLIP_LEN_SEC
from amr_jax.metrics import api as eval_api
from amr_jax.train import registry, sharding
from amr_jax.train.state import TrainState, make_train_step
from configs import amr_stage1, amr_stage2
from data_pipelines.examples import PadSpec

REAL_DIMS = dict(video_dim=2304 + 3072, text_dim=2048)
TINY_DIMS = dict(video_dim=48, text_dim=32)


def random_batch(batch: int, spec: PadSpec, seed: int = 0) -> dict:
  """Real-shape batch: all clips valid, text lengths 8..32, 1..4 GT windows, consistent labels."""
  rng = np.random.default_rng(seed)
  lv, lt, nw = spec.max_v_l, spec.max_q_l, spec.max_windows
  vid = rng.normal(size=(batch, lv, spec.video_dim + 2)).astype(np.float32)
  vid /= np.linalg.norm(vid, axis=-1, keepdims=True)
  txt = rng.normal(size=(batch, lt, spec.text_dim)).astype(np.float32)
  txt_len = rng.integers(min(8, lt), lt + 1, size=batch)
  txt_mask = (np.arange(lt)[None] < txt_len[:, None]).astype(np.float32)
  txt *= txt_mask[..., None]
  num_windows = rng.integers(1, min(4, nw) + 1, size=batch).astype(np.int32)
  spans = np.zeros((batch, nw, 2), np.float32)
  masks = np.zeros((batch, nw, lv), np.float32)
  pos = np.zeros((batch, lv), np.float32)
  for b in range(batch):
    for k in range(num_windows[b]):
      st = int(rng.integers(0, lv - 2))
      ed = int(rng.integers(st + 1, min(st + 20, lv) + 1))
      spans[b, k] = [(st + ed) / 2 / lv, (ed - st) / lv]
      masks[b, k, st:ed] = 1
      pos[b, st:ed] = 1
  sal = pos * rng.integers(0, 13, size=(batch, lv)).astype(np.float32)
  return dict(
      src_vid=vid, src_vid_mask=np.ones((batch, lv), np.float32), src_txt=txt, src_txt_mask=txt_mask,
      span_labels_cxw=spans, num_windows=num_windows, mask_labels=masks,
      saliency_pos_labels=np.stack([pos.argmax(1), pos.argmax(1)], 1).astype(np.int32),
      saliency_neg_labels=np.stack([(1 - pos).argmax(1), (1 - pos).argmax(1)], 1).astype(np.int32),
      saliency_all_labels=sal, src_pos_mask=pos, src_neg_mask=np.zeros((batch, lv), np.float32),
      has_saliency=np.ones(batch, np.float32), qid=np.arange(batch, dtype=np.int64),
      duration=np.full(batch, lv * 2.0, np.float32), sample_valid=np.ones(batch, np.float32))


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
  """Measured float32 matmul throughput on the default device (the 'peak' we compare against)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / min(times) / 1e9


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compile_timed(jitted, *args):
  """(compiled executable, seconds spent in lower + compile, XLA's FLOP count or nan)."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', float('nan')))
  except Exception:  # pylint: disable=broad-except
    flops = float('nan')
  return compiled, compile_s, flops


def time_calls(jitted, args, steps: int):
  """(compile seconds, FLOPs, [seconds per call]): one compile, one warm-up call, then `steps` timed calls."""
  compiled, compile_s, flops = compile_timed(jitted, *args)
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  return compile_s, flops, times


def build_task(suite: str, dims: str, config_path: str = '', precision: str = 'fp32', model_overrides=None):
  """(config, task, pad spec) for a suite; `config_path` picks another model's config file.

  `model_overrides` ({key: value} of `config.model`) lets tests use a shallower net of the same kind.
  """
  arg = 'tiny' if dims == 'tiny' else ''
  if config_path:
    spec = importlib.util.spec_from_file_location('bench_config', config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
  else:
    config = (amr_stage2 if suite == 'train2' else amr_stage1).get_config(arg)
  with config.unlocked():
    config.model.precision = precision
    config.model.update(model_overrides or {})
  d = REAL_DIMS if dims == 'real' else TINY_DIMS
  if dims == 'real' and 'benchmark' in config:  # a config may declare its model's real feature widths
    d = dict(video_dim=int(config.benchmark.video_dim), text_dim=int(config.benchmark.text_dim))
  spec = PadSpec(max_v_l=config.data.max_v_l if dims == 'real' else 16,
                 max_q_l=config.data.max_q_l if dims == 'real' else 8,
                 max_windows=config.data.max_windows, video_dim=d['video_dim'], text_dim=d['text_dim'])
  return config, registry.make_task(config, {'video_dim': d['video_dim'], 'text_dim': d['text_dim']}), spec


def run(suite: str, batch: int, dims: str = 'real', steps: int = 10, precision: str = 'fp32',
        num_devices: int | None = None, config_path: str = '') -> dict:
  """One suite; returns the result dict (the benchmark CLI prints it as its last line)."""
  config, task, spec = build_task(suite, dims, config_path, precision=precision)
  host_batch = random_batch(batch, spec)
  mesh = sharding.make_mesh(num_devices)
  gbatch = sharding.to_global(host_batch, mesh)
  rng = jax.random.key(0, impl='rbg')
  params = task.init_model_params(rng, {k: v[:1] for k, v in host_batch.items()})
  if suite == 'infer':
    fn = jax.jit(task.eval_forward)
    args = (params, gbatch)
  else:
    tx = task.optimizer(100, 0)
    frozen = None
    if task.config.model.get('stage') == 'distill':
      params, frozen = task.stage2_from_stage1(params, task.init_model_params(rng, {k: v[:1] for k, v in
                                                                             host_batch.items()}), rng)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen_params=frozen,
                       opt_state=tx.init(params), bad_steps=jnp.zeros((), jnp.int32))
    step = make_train_step(task, tx)
    fn = jax.jit(step)  # no donation: the same state is reused for every timed call
    args = (state, gbatch, rng)
  compile_s, flops, times = time_calls(fn, args, steps)
  flops *= mesh.size  # XLA's cost analysis of an SPMD program counts one partition
  extra = {}
  if suite == 'infer' and dims == 'real' and not config_path:
    extra.update(val_pass(task, params, fn, spec, batch, mesh))
  if precision != 'fp32':  # the opt-in precision is reported with its error against float32 on the same inputs
    extra.update(precision_parity(task, build_task(suite, dims, config_path, precision='fp32')[1],
                                  params, gbatch))
  median = statistics.median(times)
  peak = matmul_peak_gflops()
  achieved = flops / median / 1e9 if flops == flops else float('nan')
  return dict(suite=suite, dims=dims, batch=batch, devices=mesh.size, precision=precision,
              backend=jax.default_backend(), median_s=median, min_s=min(times), max_s=max(times),
              samples_per_s=batch / median, compile_s=compile_s, steps=steps, peak_rss_mb=peak_rss_mb(),
              gflop_per_step=flops / 1e9, achieved_gflops=achieved, matmul_peak_gflops=peak,
              fraction_of_peak=achieved / peak if peak else float('nan'), **extra)


def val_pass(task, params, eval_fn, spec: PadSpec, batch: int, mesh) -> dict:
  """Seconds of the whole QVH val pass: jitted inference over the 1,550 queries (real shapes), the reference
  post-processing into submission rows, then the official metrics of those rows against the val labels.

  Features are one random batch reused for every step (reading them is the input suite's job)."""
  records = annotations.load_annotations(ANNOTATIONS)
  gbatch = sharding.to_global(random_batch(batch, spec, seed=1), mesh)
  jax.block_until_ready(eval_fn(params, gbatch))  # compiled already; this only warms the call path
  start = time.perf_counter()
  rows = []
  for i in range(0, len(records), batch):
    chunk = records[i:i + batch]
    out = {k: np.asarray(v)[:len(chunk)] for k, v in eval_fn(params, gbatch).items()}
    full = spec.max_v_l * CLIP_LEN_SEC
    num_clips = [min(int((r.duration or full) // CLIP_LEN_SEC), spec.max_v_l) for r in chunk]
    rows += task.postprocess_records(out, chunk, num_clips)
  predict_s = time.perf_counter() - start
  metrics = eval_api.evaluate('qvh', rows, [r.to_json() for r in records])
  total_s = time.perf_counter() - start
  return dict(val_pass_queries=len(records), val_pass_predict_s=predict_s, val_pass_s=total_s,
              val_pass_mr_full_map=metrics['brief']['MR-full-mAP'])


def precision_parity(task, task_fp32, params, batch) -> dict:
  """Max |out - out_fp32| of the inference outputs (same params and batch), overall and per output."""
  out = jax.jit(task.eval_forward)(params, batch)
  ref = jax.jit(task_fp32.eval_forward)(params, batch)
  errors = {}
  for key in sorted(ref):
    if not jnp.issubdtype(ref[key].dtype, jnp.floating) or not ref[key].size:
      continue
    a, b = np.asarray(out[key], np.float64), np.asarray(ref[key], np.float64)
    errors[key] = float(np.max(np.abs(a - b)))
  return dict(parity_max_abs_err=max(errors.values()), parity_max_abs_err_per_output=errors)
