"""Per-sample label building: one MomentRecord + its features -> fixed-shape padded numpy arrays.

Follows the reference dataset/collate logic (amr.md §1, fixture README §3); batching lives in `batches.py`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from amr_jax.data.records import CLIP_LEN_SEC, MomentRecord


@dataclasses.dataclass(frozen=True)
class PadSpec:
  """Fixed padded shapes of one batch (nothing recompiles after the first step)."""
  max_v_l: int = 75
  max_q_l: int = 32
  max_windows: int = 10
  video_dim: int = 0      # without the 2 TEF dims
  text_dim: int = 0
  clip_len: float = CLIP_LEN_SEC


def tef(num_clips: int) -> np.ndarray:
  """Temporal endpoint features [i/L, i/L + 1/L] per clip.  # [L, 2]"""
  starts = np.arange(num_clips, dtype=np.float32) / np.float32(num_clips)
  return np.stack([starts, starts + np.float32(1.0) / np.float32(num_clips)], axis=1)


def saliency_labels(relevant_clip_ids: np.ndarray, scores: np.ndarray, num_clips: int,
                    rng: np.random.Generator):
  """Hard/easy (pos, neg) clip pairs and per-clip score sums, as moment_detr/TR-DETR build them.

  Hard pos/neg = relevant clip with the max/min annotator sum (ascending argsort); easy pos = random relevant
  clip; easy neg = random non-relevant valid clip (the hard pair is reused when no non-relevant clip exists).
  Returns (pos [2], neg [2], score_sum [num_clips]).
  """
  agg = scores.sum(axis=1)                                    # [R]
  order = np.argsort(agg)                                     # increasing, numpy default kind like the reference
  clipped = np.minimum(relevant_clip_ids, num_clips - 1)
  hard_pos, hard_neg = int(clipped[order[-1]]), int(clipped[order[0]])
  neg_pool = np.setdiff1d(np.arange(num_clips), relevant_clip_ids)
  if len(neg_pool) >= 1:
    easy_pos = int(clipped[rng.integers(len(clipped))])
    easy_neg = int(neg_pool[rng.integers(len(neg_pool))])
  else:
    easy_pos, easy_neg = hard_pos, hard_neg
  score_sum = np.zeros(num_clips, np.float32)
  keep = relevant_clip_ids < num_clips
  score_sum[relevant_clip_ids[keep]] = agg[keep]
  return np.array([hard_pos, easy_pos], np.int32), np.array([hard_neg, easy_neg], np.int32), score_sum


def clip_ids_from_windows(windows, num_clips: int, clip_len: float = CLIP_LEN_SEC) -> np.ndarray:
  """Union of range(st // clip, ed // clip) over windows, clipped to the video (the QVH definition)."""
  ids = set()
  for st, ed in windows:
    ids.update(range(int(st // clip_len), int(ed // clip_len)))
  return np.array(sorted(i for i in ids if 0 <= i < num_clips), np.int64)


def build_example(record: MomentRecord, video: np.ndarray, text: np.ndarray, spec: PadSpec,
                  rng: np.random.Generator, wrong_spans: Optional[list] = None) -> dict:
  """Labels and padded features of one sample (batch contract in `data_pipelines/__init__.py`, no B axis).

  Args:
    record: the annotation.
    video: L2-normalised video features without TEF.  # [L, Dv]
    text: L2-normalised text token features.  # [Nt, Dt]
    spec: padded shapes.
    rng: draws the easy saliency pair.
    wrong_spans: overrides record.wrong_spans (seconds).
  """
  num_clips = min(len(video), spec.max_v_l)
  num_tokens = min(len(text), spec.max_q_l)
  lv, lt, nw = spec.max_v_l, spec.max_q_l, spec.max_windows
  src_vid = np.zeros((lv, video.shape[1] + 2), np.float32)
  src_vid[:num_clips, :video.shape[1]] = video[:num_clips]
  src_vid[:num_clips, video.shape[1]:] = tef(num_clips)
  src_vid_mask = np.zeros(lv, np.float32)
  src_vid_mask[:num_clips] = 1
  src_txt = np.zeros((lt, text.shape[1]), np.float32)
  src_txt[:num_tokens] = text[:num_tokens]
  src_txt_mask = np.zeros(lt, np.float32)
  src_txt_mask[:num_tokens] = 1

  video_sec = num_clips * spec.clip_len
  windows = np.asarray(record.windows, np.float64).reshape(-1, 2)[:nw]   # first max_windows, no shuffle
  span_labels_cxw = np.zeros((nw, 2), np.float32)
  mask_labels = np.zeros((nw, lv), np.float32)
  if len(windows):
    norm = np.clip(windows / video_sec, 0.0, 1.0)
    span_labels_cxw[:len(windows)] = np.stack([norm.mean(1), norm[:, 1] - norm[:, 0]], 1)
    for k, (st, ed) in enumerate(windows):
      mask_labels[k, int(st // spec.clip_len):int(ed // spec.clip_len)] = 1

  if record.has_saliency:
    rel_ids = np.asarray(record.relevant_clip_ids, np.int64)
    scores = np.asarray(record.saliency_scores, np.float32).reshape(len(rel_ids), -1)
    has_saliency = 1.0
  else:  # no saliency annotation (Charades, QV-M² new rows): binary scores from the windows
    rel_ids = clip_ids_from_windows(record.windows, num_clips, spec.clip_len)
    scores = np.ones((len(rel_ids), 3), np.float32)
    has_saliency = 0.0
  src_pos_mask = np.zeros(lv, np.float32)
  saliency_all = np.zeros(lv, np.float32)
  if len(rel_ids):
    pos, neg, score_sum = saliency_labels(rel_ids, scores, num_clips, rng)
    saliency_all[:num_clips] = score_sum
    src_pos_mask[rel_ids[rel_ids < num_clips]] = 1
  else:
    pos = neg = np.zeros(2, np.int32)
  src_neg_mask = np.zeros(lv, np.float32)
  for st, ed in (wrong_spans if wrong_spans is not None else (record.wrong_spans or ())):
    src_neg_mask[int(st // spec.clip_len):int(ed // spec.clip_len)] = 1
  src_neg_mask[num_clips:] = 0

  return dict(
      src_vid=src_vid, src_vid_mask=src_vid_mask, src_txt=src_txt, src_txt_mask=src_txt_mask,
      span_labels_cxw=span_labels_cxw, num_windows=np.int32(len(windows)), mask_labels=mask_labels,
      saliency_pos_labels=pos, saliency_neg_labels=neg, saliency_all_labels=saliency_all,
      src_pos_mask=src_pos_mask, src_neg_mask=src_neg_mask, has_saliency=np.float32(has_saliency),
      qid=np.int64(record.qid), duration=np.float32(record.duration or video_sec),
      sample_valid=np.float32(1.0))


def stack_examples(examples: list[dict]) -> dict:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
