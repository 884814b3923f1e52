"""AMR inference post-processing: model outputs -> QVHighlights submission rows, as the reference does it.

score = fg prob x sigmoid(IoU logit); windows scaled by duration; stable sort; 4-decimal rounding; clamp; 2 s grid.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

CLAMP_MAX_SEC = 150.0


def _softmax_fg(logits: np.ndarray) -> np.ndarray:
  logits = logits.astype(np.float32)
  shifted = logits - logits.max(-1, keepdims=True)
  e = np.exp(shifted)
  return (e / e.sum(-1, keepdims=True))[..., 0]


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return (np.float32(1) / (np.float32(1) + np.exp(-x.astype(np.float32)))).astype(np.float32)


def r4(x: float) -> float:
  """The reference's `float(f"{x:.4f}")`."""
  return float(f'{x:.4f}')


def ranked_windows_unrounded(pred_logits: np.ndarray, pred_spans: np.ndarray, iou_logits: np.ndarray,
                             duration: float) -> list[list[float]]:
  """One sample's float32 [st, ed, score] rows, score-sorted (stable), before any rounding.

  Args:
    pred_logits: [Q, 2]; pred_spans: [Q, 2] sigmoid (cx, w); iou_logits: [Q] or [Q, 1].
  """
  score = (_softmax_fg(pred_logits) * _sigmoid(np.reshape(iou_logits, -1))).astype(np.float32)
  cx, w = pred_spans[:, 0].astype(np.float32), pred_spans[:, 1].astype(np.float32)
  half = w / np.float32(2)
  windows = np.stack([cx - half, cx + half], 1) * np.float32(duration)     # [Q, 2] float32
  rows = [[float(st), float(ed), float(s)] for (st, ed), s in zip(windows, score)]
  return sorted(rows, key=lambda r: r[2], reverse=True)                    # Python sort is stable


def ranked_windows(pred_logits: np.ndarray, pred_spans: np.ndarray, iou_logits: np.ndarray,
                   duration: float) -> list[list[float]]:
  """One sample's [st, ed, score] rows, score-sorted (stable), 4-decimal rounded (before post-processing)."""
  rows = ranked_windows_unrounded(pred_logits, pred_spans, iou_logits, duration)
  return [[r4(v) for v in row] for row in rows]


def postprocess_windows(rows: list[list[float]], clamp_max: Optional[float] = CLAMP_MAX_SEC,
                        duration: Optional[float] = None, grid: float = 2.0) -> list[list[float]]:
  """Clamp to [0, clamp_max] (the reference's fixed 150 s; `clamp_max=None` clamps to duration), round to
  the 2 s grid half-to-even through float32, re-round scores to 4 decimals. No NMS, no length clipping."""
  if not rows:
    return []
  arr = np.asarray(rows, np.float32)
  hi = np.float32(clamp_max if clamp_max is not None else duration)
  win = np.clip(arr[:, :2], np.float32(0), hi)
  win = np.round(win / np.float32(grid)) * np.float32(grid)                # numpy rounds half to even
  return [[float(st), float(ed), r4(float(s))] for (st, ed), s in zip(win, arr[:, 2])]


def saliency_fp16(saliency: np.ndarray, num_clips: int) -> list[float]:
  return [float(v) for v in np.asarray(saliency[:num_clips], np.float32).astype(np.float16)]


def submission_rows(outputs: dict, qids: Sequence[int], durations: Sequence[float], num_clips: Sequence[int],
                    queries: Sequence[str], vids: Sequence[str], *, fixed_clamp_150: bool = True,
                    postprocess: bool = True) -> list[dict]:
  """Rows in the QVHighlights submission format from batched host outputs (pred_logits, pred_spans,
  iou_scores, saliency_scores)."""
  rows = []
  for b, qid in enumerate(qids):
    ranked = ranked_windows(outputs['pred_logits'][b], outputs['pred_spans'][b], outputs['iou_scores'][b],
                            float(durations[b]))
    if postprocess:
      ranked = postprocess_windows(ranked, CLAMP_MAX_SEC if fixed_clamp_150 else None, float(durations[b]))
    rows.append(dict(qid=int(qid), query=queries[b], vid=vids[b], pred_relevant_windows=ranked,
                     pred_saliency_scores=saliency_fp16(outputs['saliency_scores'][b], int(num_clips[b]))))
  return rows
