"""`Predictor`: load a training workdir or an export, run jitted batched inference over a feature store.

Videos longer than max_v_l are covered by overlapping sliding windows whose predictions are merged (option).
"""
from __future__ import annotations

import json
import pathlib
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np

from amr_jax import predict as predict_lib
from amr_jax.data.records import MomentRecord
from amr_jax.train import checkpoints as ckpt_lib
from data_pipelines.batches import seeded_rng
from data_pipelines.examples import PadSpec, build_example, stack_examples


def temporal_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Pairwise IoU of [N, 2] and [M, 2] windows.  # [N, M]"""
  inter = np.clip(np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
  union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(rows: list[list[float]], iou_threshold: float, max_keep: int) -> list[list[float]]:
  """Greedy NMS over score-sorted [st, ed, score] rows."""
  kept: list[list[float]] = []
  for row in sorted(rows, key=lambda r: r[2], reverse=True):
    if kept and temporal_iou(np.array([row[:2]]), np.array([k[:2] for k in kept])).max() >= iou_threshold:
      continue
    kept.append(row)
    if len(kept) == max_keep:
      break
  return kept


class Predictor:
  """Inference from a training workdir (best checkpoint, else the last) or an export directory."""

  def __init__(self, workdir: str | pathlib.Path, *, which: str = 'best', sliding_window: bool = True,
               window_overlap: int = 25, batch_size: int = 32, merge_nms_iou: float = 0.7):
    from amr_jax.train.registry import get_task, load_trained_params  # pylint: disable=import-outside-toplevel
    path = pathlib.Path(workdir)
    if not (path / 'config.json').exists():
      raise FileNotFoundError(f'{path}: not a training workdir or export (no config.json)')
    saved = json.loads((path / 'config.json').read_text())
    self.config = ml_collections.ConfigDict(saved['run'])
    dims = saved['dims']
    self.video_dim, self.text_dim = int(dims['video_dim']), int(dims['text_dim'])
    if which == 'best' and not (path / 'best').exists():
      which = 'last'
    self.params = load_trained_params(str(path), which=which)
    self.task = get_task(self.config, self.video_dim + 2, self.text_dim)
    self.spec = PadSpec(max_v_l=self.config.data.max_v_l, max_q_l=self.config.data.max_q_l,
                        max_windows=self.config.data.max_windows, video_dim=self.video_dim,
                        text_dim=self.text_dim, clip_len=self.config.data.clip_len)
    self.sliding_window = sliding_window
    self.window_overlap = window_overlap
    self.merge_nms_iou = merge_nms_iou
    self.batch_size = batch_size
    self._forward = jax.jit(self.task.eval_forward)

  # ------------------------------------------------------------------------------------------------
  def _chunks(self, num_clips: int) -> list[tuple[int, int]]:
    lv = self.spec.max_v_l
    if num_clips <= lv or not self.sliding_window:
      return [(0, min(num_clips, lv))]
    stride = max(lv - self.window_overlap, 1)
    starts = list(range(0, num_clips - lv + 1, stride))
    if starts[-1] + lv < num_clips:
      starts.append(num_clips - lv)
    return [(s, s + lv) for s in starts]

  def raw_outputs(self, examples: list[dict]) -> dict:
    """Batched jitted forward (fixed batch shape: the last batch is padded by repetition)."""
    outs = []
    for start in range(0, len(examples), self.batch_size):
      chunk = examples[start:start + self.batch_size]
      pad = self.batch_size - len(chunk)
      batch = stack_examples(chunk + [chunk[0]] * pad)
      out = jax.device_get(self._forward(self.params, batch))
      outs.append({k: np.asarray(v)[:len(chunk)] for k, v in out.items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  def predict(self, records: Sequence[MomentRecord], store, progress=None) -> list[dict]:
    """Submission rows (QVHighlights format) for `records`, reading features from `store`."""
    jobs, examples = [], []
    for r in records:
      video, text = store.video(r.vid), store.text(r.qid)
      windowed = len(video) > self.spec.max_v_l and self.sliding_window
      for (s, e) in self._chunks(len(video)):
        # A chunk is predicted as a video of its own; the labels are not needed for inference.
        sub = r.replace(windows=(), relevant_clip_ids=None, saliency_scores=None, wrong_spans=None,
                        duration=(e - s) * self.spec.clip_len if windowed else r.duration)
        examples.append(build_example(sub, video[s:e], text, self.spec, seeded_rng(0, 'predict', r.qid)))
        jobs.append((r, s, e, len(video), windowed))
      if progress:
        progress(len(jobs))
    out = self.raw_outputs(examples)
    return self._merge(jobs, out)

  def _merge(self, jobs, out) -> list[dict]:
    clamp = predict_lib.CLAMP_MAX_SEC if self.config.quirks.fixed_clamp_150 else None
    rows: dict[int, dict] = {}
    for i, (r, s, e, total, windowed) in enumerate(jobs):
      offset = s * self.spec.clip_len
      sub_duration = (e - s) * self.spec.clip_len
      ranked = predict_lib.ranked_windows(out['pred_logits'][i], out['pred_spans'][i], out['iou_scores'][i],
                                          sub_duration if windowed else float(r.duration or sub_duration))
      length = total if windowed else e - s
      entry = rows.setdefault(r.qid, dict(query=r.query, vid=r.vid, windows=[], windowed=windowed,
                                          duration=r.duration or sub_duration,
                                          sal_sum=np.zeros(length), sal_cnt=np.zeros(length)))
      entry['windows'] += [[st + offset, ed + offset, sc] for st, ed, sc in ranked]
      entry['sal_sum'][s:e] += out['saliency_scores'][i][:e - s]
      entry['sal_cnt'][s:e] += 1
    result = []
    for qid, entry in rows.items():
      windows = entry['windows']
      if entry['windowed']:  # merge overlapping chunk predictions
        windows = nms(windows, self.merge_nms_iou, self.config.model.num_queries)
        windows = predict_lib.postprocess_windows(windows, None, entry['duration'])
      else:
        windows = predict_lib.postprocess_windows(windows, clamp, entry['duration'])
      saliency = entry['sal_sum'] / np.maximum(entry['sal_cnt'], 1)
      result.append(dict(qid=qid, query=entry['query'], vid=entry['vid'], pred_relevant_windows=windows,
                         pred_saliency_scores=predict_lib.saliency_fp16(saliency, len(saliency))))
    return result
