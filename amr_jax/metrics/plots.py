"""Per-query PNG plots of a prediction: saliency curve over 2 s clips, GT windows, top-k predicted windows.

matplotlib (Agg backend) is imported only when a plot is drawn, so importing this module costs nothing.
"""
from __future__ import annotations

import pathlib
import textwrap

import numpy as np

CLIP_LENGTH_SEC = 2.0
_TITLE_WIDTH = 70  # characters per title line before wrapping


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def plot_query(path, *, qid, query: str, duration: float | None, saliency, gt_windows, pred_windows,
               top_k: int = 5, gt_saliency=None) -> pathlib.Path:
  """Writes one PNG for a query and returns its path.

  Args:
    path: output file (parent folders are created).
    qid, query: shown in the title (the query is wrapped).
    duration: video length in seconds (None: inferred from the clips and windows).
    saliency: predicted score per 2 s clip (may be empty).
    gt_windows: [[start, end], ...] in seconds, drawn as shaded spans.
    pred_windows: [[start, end, score], ...] in rank order; the first `top_k` are drawn as bars with their scores.
    top_k: how many predicted windows to draw.
    gt_saliency: optional GT score per clip (e.g. the mean over annotators), drawn as a second curve.
  """
  plt = _pyplot()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  saliency = np.asarray(saliency, dtype=np.float64).reshape(-1)
  gt_windows = [list(w)[:2] for w in (gt_windows or [])]
  shown = [list(w)[:3] for w in (pred_windows or [])[:top_k]]
  ends = [len(saliency) * CLIP_LENGTH_SEC] + [w[1] for w in gt_windows] + [w[1] for w in shown]
  span = float(duration) if duration else max(ends + [CLIP_LENGTH_SEC])

  fig, (ax_curve, ax_bars) = plt.subplots(
      2, 1, figsize=(10, 5.2), sharex=True, gridspec_kw={'height_ratios': [2.2, 1.3]})
  for ax in (ax_curve, ax_bars):
    for st, ed in gt_windows:
      ax.axvspan(st, ed, color='tab:green', alpha=0.18, lw=0)
  clip_centres = (np.arange(len(saliency)) + 0.5) * CLIP_LENGTH_SEC
  if len(saliency):
    ax_curve.plot(clip_centres, saliency, color='tab:blue', lw=1.6, marker='o', ms=2.5,
                  label='predicted saliency')
  handles = []
  if gt_saliency is not None and len(gt_saliency):
    gt_curve = np.asarray(gt_saliency, dtype=np.float64).reshape(-1)
    ax_twin = ax_curve.twinx()
    ax_twin.step((np.arange(len(gt_curve)) + 0.5) * CLIP_LENGTH_SEC, gt_curve, where='mid', color='tab:orange',
                 lw=1.2, alpha=0.8, label='GT saliency (mean of annotators)')
    ax_twin.set_ylabel('GT saliency', color='tab:orange')
    handles += ax_twin.get_legend_handles_labels()[0]
  ax_curve.set_ylabel('predicted saliency')
  ax_curve.plot([], [], color='tab:green', alpha=0.4, lw=8, label='GT windows')
  handles = ax_curve.get_legend_handles_labels()[0] + handles
  ax_curve.legend(handles=handles, loc='lower left', bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8,
                  frameon=False)
  ax_curve.grid(alpha=0.3)

  for rank, (st, ed, score) in enumerate(shown):
    ax_bars.barh(rank, ed - st, left=st, height=0.6, color='tab:red' if rank == 0 else 'tab:purple', alpha=0.75)
    ax_bars.text(max(st, 0) + 0.5, rank, f'{score:.3f}  [{st:g}, {ed:g}]', va='center', fontsize=8,
                 color='black')
  ax_bars.set_yticks(range(len(shown)), [f'#{i + 1}' for i in range(len(shown))])
  ax_bars.set_ylim(len(shown) - 0.4 if shown else 0.6, -0.6)
  ax_bars.set_ylabel(f'top-{len(shown)} windows')
  ax_bars.set_xlabel('time (s)')
  ax_bars.set_xlim(0, span)
  ax_bars.grid(axis='x', alpha=0.3)

  title = textwrap.fill(f'qid {qid}: {query}', width=_TITLE_WIDTH)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _gt_saliency_curve(gt_row: dict) -> np.ndarray | None:
  """Mean annotator score per clip on the full clip grid, when the GT row has saliency labels."""
  clip_ids, scores, duration = gt_row.get('relevant_clip_ids'), gt_row.get('saliency_scores'), gt_row.get('duration')
  if not clip_ids or not scores or not duration:
    return None
  curve = np.zeros(int(duration / CLIP_LENGTH_SEC))
  ids = np.asarray(clip_ids, dtype=np.int64)
  keep = (ids >= 0) & (ids < len(curve))
  curve[ids[keep]] = np.asarray(scores, dtype=np.float64).mean(axis=1)[keep]
  return curve


def plot_submission(out_dir, submission_rows: list, gt_rows_by_qid: dict, max_plots: int = 20,
                    top_k: int = 5) -> int:
  """Plots the first `max_plots` submission rows into OUT_DIR/qid{qid}.png; returns how many were written.

  GT rows (looked up by qid; missing ones plot without GT) give the windows, the duration and, when present,
  the mean annotator saliency per clip.
  """
  out_dir = pathlib.Path(out_dir)
  written = 0
  for row in submission_rows[:max_plots]:
    qid = row.get('qid')
    gt_row = gt_rows_by_qid.get(qid) or {}
    plot_query(out_dir / f'qid{qid}.png', qid=qid, query=row.get('query') or gt_row.get('query', ''),
               duration=gt_row.get('duration'), saliency=row.get('pred_saliency_scores') or [],
               gt_windows=gt_row.get('relevant_windows') or [], pred_windows=row.get('pred_relevant_windows') or [],
               top_k=top_k, gt_saliency=_gt_saliency_curve(gt_row))
    written += 1
  return written
