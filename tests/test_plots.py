"""Per-query plots: a readable PNG is written for a query and for the first rows of a submission.

Checks files, not pixels: they must exist, be PNGs and be non-trivial in size.
"""
import pathlib

import numpy as np

from amr_jax.metrics import plots

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _is_png(path: pathlib.Path) -> bool:
  return path.exists() and path.stat().st_size > 5_000 and path.read_bytes()[:8] == PNG_MAGIC


def test_plot_query_writes_png(tmp_path):
  out = plots.plot_query(tmp_path / 'deep' / 'q.png', qid=7, query='a person opens the door ' * 6, duration=150,
                         saliency=np.sin(np.arange(75) / 5.0), gt_windows=[[10, 30], [90, 100]],
                         pred_windows=[[12, 28, 0.9], [0, 150, 0.5], [88, 104, 0.4], [5, 5, 0.1]], top_k=3)
  assert _is_png(out)


def test_plot_query_handles_empty_inputs(tmp_path):
  assert _is_png(plots.plot_query(tmp_path / 'e.png', qid='x', query='', duration=None, saliency=[],
                                  gt_windows=[], pred_windows=[]))


def test_plot_submission_respects_max_plots(tmp_path):
  gt = {q: {'qid': q, 'query': f'query {q}', 'duration': 20, 'relevant_windows': [[2, 8]],
            'relevant_clip_ids': [1, 2, 3], 'saliency_scores': [[1, 2, 3], [4, 4, 4], [0, 1, 2]]} for q in range(4)}
  rows = [{'qid': q, 'query': f'query {q}', 'pred_relevant_windows': [[2, 8, 0.7]],
           'pred_saliency_scores': list(np.linspace(0, 1, 10))} for q in range(4)]
  assert plots.plot_submission(tmp_path, rows, gt, max_plots=2) == 2
  assert sorted(p.name for p in tmp_path.glob('*.png')) == ['qid0.png', 'qid1.png']
  assert all(_is_png(p) for p in tmp_path.glob('*.png'))
