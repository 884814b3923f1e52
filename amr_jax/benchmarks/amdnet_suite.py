"""Benchmark suites amdnet_train / amdnet_eval: the jitted AMDNet train step and the whole TVR-sized evaluation.

Real TVR dims as released: d 384, 32 clips, 4 moments, 512-d CLIP frames and sentences, 128 videos x 5 captions.
"""
from __future__ import annotations

import statistics
import time
import zlib
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.benchmarks import steps as steps_lib
from amr_jax.data import prvr as prvr_data
from amr_jax.metrics import prvr as prvr_metrics
from amr_jax.metrics import prvr_evaluator
from amr_jax.train import inference, registry, sharding
from amr_jax.train.state import TrainState, make_train_step
from configs import amdnet as amdnet_config
from data_pipelines import prvr_batches

DIMS = {'real': dict(video_dim=512, text_dim=512), 'tiny': dict(video_dim=32, text_dim=32)}
# TVR val (= the PRVR test split): 10,895 captions of 2,179 videos, 5 captions each.
TVR_VAL_CAPTIONS, TVR_VAL_VIDEOS, TVR_CAPTIONS_PER_VIDEO = 10895, 2179, 5
# Frame slots per video before clip pooling: the original's frame cap max_ctx_l (TVR videos run 60-150 s).
FRAMES = 128


def build_task(dims: str = 'real'):
  """(config, task) of configs/amdnet.py (the TVR recipe; :tiny for dims 'tiny') with the benchmark widths."""
  config = amdnet_config.get_config('' if dims == 'real' else 'tiny')
  return config, registry.make_task(config, DIMS[dims])


def random_train_batch(batch: int, frames: int, captions: int, video_dim: int, text_dim: int,
                       seed: int = 0) -> dict:
  """B videos of frames//4 .. frames valid frames (random CLIP-like unit vectors), each with all C captions."""
  rng = np.random.default_rng(seed)
  feat = rng.normal(size=(batch, frames, video_dim)).astype(np.float32)
  feat /= np.linalg.norm(feat, axis=-1, keepdims=True)
  count = rng.integers(max(1, frames // 4), frames + 1, size=batch)
  mask = (np.arange(frames)[None] < count[:, None]).astype(np.float32)
  text = rng.normal(size=(batch, captions, text_dim)).astype(np.float32)
  text /= np.linalg.norm(text, axis=-1, keepdims=True)
  return {'video_feat': feat * mask[..., None], 'video_mask': mask, 'caption_feat': text,
          'caption_mask': np.ones((batch, captions), np.float32), 'sample_valid': np.ones(batch, np.float32)}


def _result(suite: str, dims: str, batch: int, mesh, times, compile_s: float, flops: float, **extra) -> dict:
  median = statistics.median(times)
  peak = steps_lib.matmul_peak_gflops()
  achieved = flops / median / 1e9 if flops == flops else float('nan')
  return dict(suite=suite, dims=dims, batch=batch, devices=mesh.size, backend=jax.default_backend(),
              median_s=median, min_s=min(times), max_s=max(times), samples_per_s=batch / median,
              compile_s=compile_s, steps=len(times), peak_rss_mb=steps_lib.peak_rss_mb(),
              gflop_per_step=flops / 1e9, achieved_gflops=achieved, matmul_peak_gflops=peak,
              fraction_of_peak=achieved / peak if peak else float('nan'), **extra)


def train(batch: int = 128, dims: str = 'real', steps: int = 10, captions: int = TVR_CAPTIONS_PER_VIDEO,
          frames: int = FRAMES, num_devices: Optional[int] = None) -> dict:
  """The trainer's jitted step (forward, loss, gradients, BertAdam) on `batch` videos with `captions` each.

  samples_per_s counts videos; gflop_per_step is XLA's count over all partitions."""
  config, task = build_task(dims)
  mesh = sharding.make_mesh(num_devices)
  host = random_train_batch(batch, frames, captions, task.dims['video_dim'], task.dims['text_dim'])
  gbatch = sharding.to_global(host, mesh)
  params, _ = task.init_params(jax.random.key(0), host)
  tx = task.optimizer(100, 10000)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen_params=None,
                     opt_state=tx.init(params), bad_steps=jnp.zeros((), jnp.int32))
  repl = sharding.replicated(mesh)
  state = jax.device_put(state, repl)
  fn = jax.jit(make_train_step(task, tx))   # no donation: the same state is reused for every timed call
  compile_s, flops, times = steps_lib.time_calls(fn, (state, gbatch, jax.random.key(0, impl='rbg')), steps)
  flops *= mesh.size   # XLA's cost analysis of an SPMD program counts one partition
  return _result('amdnet_train', dims, batch, mesh, times, compile_s, flops, captions_per_video=captions,
                 frame_slots=frames, queries_per_step=batch * captions,
                 train_batch_size_config=int(config.train.batch_size))


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------
class _RandomFeatures:
  """An in-memory feature source (the `PrvrStore` source interface) of deterministic random unit vectors."""

  def __init__(self, dim: int, lengths: Optional[dict] = None, seed: int = 0):
    self.dim, self.lengths, self.seed, self.path = dim, lengths, seed, '<random>'

  def read(self, key: str) -> np.ndarray:
    rng = np.random.default_rng([self.seed, zlib.crc32(key.encode())])
    shape = (self.lengths[key], self.dim) if self.lengths is not None else (self.dim,)
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  def length(self, key: str) -> int:
    return self.lengths[key] if self.lengths is not None else 1

  def has(self, key: str) -> bool:
    return self.lengths is None or key in self.lengths

  def source(self, key: str) -> str:
    del key
    return self.path

  def close(self) -> None:
    pass


def random_eval_split(num_captions: int, num_videos: int, video_dim: int, text_dim: int, frames: int = FRAMES,
                      seed: int = 0) -> prvr_batches.PrvrSplit:
  """A split of `num_videos` videos (frames//4 .. frames frames) and `num_captions` captions spread over them."""
  per_video = -(-num_captions // num_videos)
  captions = [prvr_data.Caption(f'v{i // per_video:05d}#{i % per_video}', 'a caption') for i in range(num_captions)]
  collection = prvr_data.PrvrCollection(captions, name='bench', split='val')
  rng = np.random.default_rng(seed)
  lengths = {vid: int(n) for vid, n in zip(collection.video_ids,
                                           rng.integers(max(1, frames // 4), frames + 1, len(collection.video_ids)))}
  store = prvr_data.PrvrStore(_RandomFeatures(video_dim, lengths, seed), _RandomFeatures(text_dim, None, seed + 1))
  config = prvr_batches.PrvrBatchConfig(max_frames=frames)
  return prvr_batches.PrvrSplit(collection, store, config)


# Similarity blocks of the suite (captions x videos): one [200, 384] x [384, 32 * 32] dot per block (an 800 KiB
# output, in L2). XLA:CPU rounds the dot identically for 8, 50, 100 or 200 rows (not 128, 256, 512, ..): the
# scores are bitwise those of the config's (50, 100) blocks (the original's eval_query_bsz), at a larger dot.
SCORE_BLOCK = (200, 32)


def score_matmul_peak_gflops(caption_block: int, video_block: int, tokens: int, dim: int) -> float:
  """The same-run float32 matmul peak of the scoring's dot shape: a plain jitted [Bq, d] x [d, Bv * T]."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(caption_block, dim)).astype(np.float32))
  b = jnp.asarray(rng.normal(size=(dim, video_block * tokens)).astype(np.float32))
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST))
  _, _, times = steps_lib.time_calls(matmul, (a, b), 20)
  return 2.0 * caption_block * video_block * tokens * dim / min(times) / 1e9


def evaluate(num_captions: int = TVR_VAL_CAPTIONS, num_videos: int = TVR_VAL_VIDEOS, dims: str = 'real',
             repeats: int = 3, frames: int = FRAMES, batch_size: Optional[int] = None,
             num_devices: Optional[int] = None, score_block: Optional[tuple] = SCORE_BLOCK) -> dict:
  """The whole corpus evaluation the trainer runs: `task.predict` (every video and caption encoded once through
  the BatchRunner, the [Nq, Nv] similarity in blocks on device, one jitted program) + the 'prvr' evaluator
  (ranks on device from the GT score, R@K, SumR).

  Features are in memory (reading them is not timed). score_block: (captions, videos) per similarity block
  (None = the config's eval.query_batch_size x eval.context_batch_size). compile_s = the first pass minus the
  median warm pass; median_s = a warm pass; cpu_s = the process CPU seconds of a pass (all threads: steadier
  than wall time on a shared machine). Phases (medians over the warm passes): video_encode_s, caption_encode_s,
  score_s (normalise + blocked similarity, on device), to_host_s (the [Nq, Nv] matrix to host: what `predict`
  returns), metrics_s (the evaluator: ranks on device from the device matrix, then the recalls).
  samples_per_s counts captions; score_gflops = the similarity's 2 Nq Nv T d over score_s, against
  score_matmul_peak_gflops (a plain jitted matmul of the block's dot shape, this run)."""
  config, task = build_task(dims)
  mesh = sharding.make_mesh(num_devices)
  t0 = time.perf_counter()
  split = random_eval_split(num_captions, num_videos, task.dims['video_dim'], task.dims['text_dim'], frames)
  data = prvr_batches.PrvrEvalData(split)
  build_s = time.perf_counter() - t0
  params = jax.device_put(task.init_params(jax.random.key(0), {})[0], sharding.replicated(mesh))
  run = inference.make_runner(mesh)
  evaluator = prvr_evaluator.PrvrEvaluator()
  batch_size = int(batch_size or config.eval.batch_size)
  caption_block, video_block = (score_block if score_block else
                                (int(config.eval.query_batch_size), int(config.eval.context_batch_size)))

  def one_pass() -> tuple:
    cpu_start, start = time.process_time(), time.perf_counter()
    tokens = task.video_tokens(params, data, run, batch_size)
    videos_done = time.perf_counter()
    queries = task.query_embeddings(params, data, run, batch_size)
    captions_done = time.perf_counter()
    device_scores = jax.block_until_ready(task.similarity(queries, tokens, caption_block=caption_block,
                                                          video_block=video_block, to_host=False))
    scored = time.perf_counter()
    scores = np.asarray(device_scores)   # what `predict` returns (and a score file holds)
    on_host = time.perf_counter()
    del scores
    predictions = {'scores': device_scores, 'cap_ids': data.cap_ids, 'vid_ids': data.video_ids}
    result = evaluator.evaluate(predictions, data.ground_truth)
    end = time.perf_counter()
    return end - start, {'cpu_s': time.process_time() - cpu_start, 'video_encode_s': videos_done - start,
                         'caption_encode_s': captions_done - videos_done, 'score_s': scored - captions_done,
                         'to_host_s': on_host - scored, 'metrics_s': end - on_host}, result

  first, _, _ = one_pass()
  times, phase_runs = [], []
  for _ in range(repeats):
    seconds, phases, result = one_pass()
    times.append(seconds)
    phase_runs.append(phases)
  phases = {k: statistics.median(p[k] for p in phase_runs) for k in phase_runs[0]}
  # FLOPs: XLA's count of one video block and one caption block encode, times the blocks; the similarity
  # 2 Nq Nv T d (its normalisations and max are O(Nq Nv T), negligible).
  block = int(np.ceil(batch_size / mesh.size) * mesh.size)
  video_block_batch = sharding.to_global(next(data.videos().batches(block)), mesh)
  caption_block_batch = sharding.to_global(next(data.batches(block)), mesh)
  forward = jax.jit(task.eval_forward)
  _, _, video_flops = steps_lib.compile_timed(forward, params, video_block_batch)
  _, _, caption_flops = steps_lib.compile_timed(forward, params, caption_block_batch)
  tokens_per_video = task.model_cfg.map_size if task.model_cfg.score_mode == 'clip' else task.model_cfg.event_size
  hidden = task.model_cfg.hidden_size
  score_flops = 2.0 * len(data) * len(data.video_ids) * tokens_per_video * hidden
  encode_flops = mesh.size * (video_flops * -(-len(data.video_ids) // block) + caption_flops * -(-len(data) // block))
  flops = encode_flops + score_flops
  median = statistics.median(times)
  score_peak = score_matmul_peak_gflops(min(caption_block, len(data)), min(video_block, len(data.video_ids)),
                                        tokens_per_video, hidden)
  square_peak = steps_lib.matmul_peak_gflops()
  score_gflops = score_flops / phases['score_s'] / 1e9
  encode_gflops = encode_flops / (phases['video_encode_s'] + phases['caption_encode_s']) / 1e9
  achieved = flops / median / 1e9
  return dict(suite='amdnet_eval', dims=dims, batch=len(data), devices=mesh.size, backend=jax.default_backend(),
              median_s=median, min_s=min(times), max_s=max(times), samples_per_s=len(data) / median,
              compile_s=max(first - median, 0.0), first_pass_s=first, steps=len(times),
              peak_rss_mb=steps_lib.peak_rss_mb(), **phases,
              gflop_per_step=flops / 1e9, score_gflop=score_flops / 1e9, encode_gflop=encode_flops / 1e9,
              achieved_gflops=achieved, score_gflops=score_gflops, encode_gflops=encode_gflops,
              score_matmul_peak_gflops=score_peak, score_fraction_of_peak=score_gflops / score_peak,
              matmul_peak_gflops=square_peak, fraction_of_peak=achieved / square_peak,
              num_captions=len(data), num_videos=len(data.video_ids), frame_slots=frames,
              encode_batch_size=batch_size, score_block=(caption_block, video_block),
              config_score_block=(int(config.eval.query_batch_size), int(config.eval.context_batch_size)),
              build_split_s=build_s, R1=result['R1'], R5=result['R5'], R10=result['R10'], R100=result['R100'],
              SumR=result['SumR'])
