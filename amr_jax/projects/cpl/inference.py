"""CPL inference (`MainRunner.eval` of the reference): NLL-ranked proposals, loss- and vote-based top-1, top-5.

The forward part is jittable; the vote (float32 IoUs, float64 sums, as the reference) runs on host in numpy.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.projects.cpl import losses as losses_lib
from amr_jax.projects.cpl import model as model_lib

Array = jax.Array
TOP1_MODES = ('loss', 'vote')
VOTE_WEIGHTINGS = ('dataset', 'charades', 'uniform')
CHARADES_NAMES = ('CharadesSTA', 'charades', 'charades-sta', 'charades_sta')


def proposal_windows(center: Array, width: Array, clamp: bool = True) -> Array:
  """[..., K, 2] windows [max(c - w/2, 0), min(c + w/2, 1)] (normalised time, float32; `clamp` [Q24])."""
  start, end = center - width / 2, center + width / 2
  if clamp:
    start, end = jnp.maximum(start, 0.0), jnp.minimum(end, 1.0)
  return jnp.stack([start, end], axis=-1)


def rank_by_nll(nll: Array) -> Array:
  """[B, K] proposal order by ascending reconstruction NLL (first index first on ties)."""
  return jnp.argsort(nll, axis=-1, stable=True)


def eval_masked_words(batch: Dict[str, Any], seed: int, random_mask: bool) -> Array:
  """The masking decision at eval: the batch's `masked_words` if given, else the reference's random draw
  (seeded: row b uses fold_in(key(seed), sample_index[b] or b)) when `random_mask`, else nothing masked [Q23]."""
  if 'masked_words' in batch:
    return jnp.asarray(batch['masked_words'])
  words_mask = jnp.asarray(batch['words_mask'])
  if not random_mask:
    return jnp.zeros(words_mask.shape, jnp.int32)
  row_ids = batch.get('sample_index')
  return model_lib.draw_masked_words(jax.random.PRNGKey(seed), words_mask, jnp.asarray(batch['weights']),
                                     None if row_ids is None else jnp.asarray(row_ids))


def eval_forward(model: model_lib.CPL, params, batch: Dict[str, Any], loss_cfg: losses_lib.CPLLossConfig,
                 *, seed: int = 0, random_mask: bool = True, eval_epoch: int = 0,
                 clamp_windows: bool = True) -> Dict[str, Array]:
  """Jittable eval forward: NLL of every proposal, the ranking and the ranked windows.

  Only the positive pass runs (the reference computes the negatives at epoch 0 and does not use them).

  Returns:
    {'nll' [B, K], 'rank_order' [B, K] int32, 'center', 'width' [B, K], 'ranked_windows' [B, K, 2],
     'masked_words' [B, W]}.
  """
  masked = eval_masked_words(batch, seed, random_mask)
  sample_valid = batch.get('sample_valid')
  epoch = jnp.full((batch['frames_feat'].shape[0],), eval_epoch, jnp.int32)
  out = model.apply({'params': params}, batch['frames_feat'], batch['frames_mask'], batch['words_feat'],
                    batch['words_mask'], masked, epoch, train=False, negatives=False, sample_valid=sample_valid)
  targets = model_lib.decoder2_targets(jnp.asarray(batch['words_id']), out['word_valid'].shape[1])
  _, nll = losses_lib.token_nll(out['logits_pos'], jnp.broadcast_to(targets[:, None], out['logits_pos'].shape[:-1]),
                                jnp.broadcast_to(out['word_valid'][:, None], out['logits_pos'].shape[:-1]),
                                loss_cfg.label_smoothing, loss_cfg.smoothing_over_all_classes)
  return dict(ranked_outputs(nll, out['center'], out['width'], clamp_windows),
              masked_words=jnp.asarray(masked, jnp.int32))


def ranked_outputs(nll: Array, center: Array, width: Array, clamp_windows: bool = True) -> Dict[str, Array]:
  """{'nll', 'rank_order' (ascending NLL), 'center', 'width', 'ranked_windows' [B, K, 2]} from per-proposal NLLs."""
  order = rank_by_nll(nll)
  windows = proposal_windows(center, width, clamp_windows)
  ranked = jnp.take_along_axis(windows, order[..., None], axis=1)
  return {'nll': nll, 'rank_order': order.astype(jnp.int32), 'center': center, 'width': width,
          'ranked_windows': ranked}


# ----------------------------------------------------------------------------------------------------------------
# Host side (numpy), exact to the reference's float32 / float64 mix.


# GENERIC-OP: the weak-MR IoU (eps 1e-10, hull denominator); ops.spans / metrics.common have no-eps variants.
def cpl_iou(start1, end1, start2, end2, eps: float = 1e-10) -> np.ndarray:
  """The reference's `calculate_IoU_batch`: (inter + eps) / (hull + eps), 0 where negative (eps 1e-10) [Q24].

  Arithmetic in the inputs' dtype (float32 windows stay float32). The denominator is the hull
  [min start, max end]: the union for overlapping windows; disjoint windows get 0, touching ones 1e-10 / hull.
  """
  start1, end1, start2, end2 = (np.asarray(x) for x in (start1, end1, start2, end2))
  hull_s, hull_e = np.minimum(start1, start2), np.maximum(end1, end2)
  inter_s, inter_e = np.maximum(start1, start2), np.minimum(end1, end2)
  iou = 1.0 * (inter_e - inter_s + eps) / (hull_e - hull_s + eps)
  iou = np.array(iou, copy=True)
  iou[(hull_e - hull_s) < -1e-5] = 0
  iou[iou < 0] = 0.0
  return iou


def vote(ranked_windows: np.ndarray, charades_weighting: bool, iou_eps: float = 1e-10):
  """Vote-based top-1 over NLL-ranked windows [N, K, 2] (float32) [Q25].

  votes_i = sum_j IoU(p_i, p_j) c_j with c_j = IoU(p_0, p_j) (Charades-STA) or 1; float32 IoUs, float64 sums in
  the reference's order; argmax, first rank on ties.

  Returns:
    (rank [N] int64, c [N, K] float64, votes [N, K] float64).
  """
  props = np.asarray(ranked_windows)
  num, k = props.shape[:2]
  if charades_weighting:
    c = np.zeros((num, k))
    for i in range(k):
      c[:, i] = cpl_iou(props[:, 0, 0], props[:, 0, 1], props[:, i, 0], props[:, i, 1], iou_eps)
  else:
    c = np.ones((num, k))
  votes = np.zeros((num, k))
  for i in range(k):
    for j in range(k):
      votes[:, i] = votes[:, i] + cpl_iou(props[:, i, 0], props[:, i, 1], props[:, j, 0], props[:, j, 1],
                                          iou_eps) * c[:, j]
  return np.argmax(votes, axis=1), c, votes


def is_charades(dataset_name: str) -> bool:
  """Whether the reference's Charades vote weighting applies (`dataset == 'CharadesSTA'`)."""
  return dataset_name in CHARADES_NAMES


def _pick(rank: int, order, ranked_norm, duration) -> dict:
  return {'rank': int(rank), 'proposal': int(order[rank]), 'window_norm': ranked_norm[rank].tolist(),
          'window_sec': (ranked_norm[rank].astype(np.float64) * duration).tolist()}


def prediction_rows(host_outputs: Dict[str, np.ndarray], durations: Sequence[float], *, top_k: int = 5,
                    dataset_name: str = 'CharadesSTA', top1_mode: str = 'loss', vote_weighting: str = 'dataset',
                    iou_eps: float = 1e-10, extra: Optional[Dict[str, Sequence[Any]]] = None) -> List[dict]:
  """Per-query rows (inference.json layout): ranking, windows (normalised, seconds), every top-1 variant, top-k.

  Args:
    host_outputs: numpy `eval_forward` outputs (padding rows removed).
    durations: [N] seconds.
    top_k: windows kept for R@k (min(K, top_k); the reference's 5).
    dataset_name: selects the vote weighting of 'vote' mode when vote_weighting = 'dataset'.
    top1_mode: 'loss' or 'vote': which top-1 goes first in 'pred_windows_sec'.
    vote_weighting: 'dataset' (reference: Charades-STA weights c_j = IoU with the top-1, else 1), 'charades'
      or 'uniform' [Q25].
    iou_eps: epsilon of the vote IoUs (the reference's 1e-10) [Q24].
    extra: per-row values copied into each row (qid, vid, ...).

  Returns:
    rows with 'nll_per_proposal', 'center', 'width', 'rank_order', 'ranked_windows_norm', 'ranked_windows_sec',
    'top1_loss', 'top1_vote_charades', 'top1_vote_activitynet', 'top5_windows_sec', 'pred_windows_sec'
    (the chosen top-1, then the other ranked windows), and the eval/predictions.json names 'nll',
    'ranked_windows_norm_f32', 'top5_sec', 'vote_charades_rank', 'vote_activitynet_rank'.
  """
  if top1_mode not in TOP1_MODES:
    raise ValueError(f'top1_mode {top1_mode!r} not in {TOP1_MODES}')
  if vote_weighting not in VOTE_WEIGHTINGS:
    raise ValueError(f'vote_weighting {vote_weighting!r} not in {VOTE_WEIGHTINGS}')
  ranked = np.asarray(host_outputs['ranked_windows'], np.float32)
  order = np.asarray(host_outputs['rank_order'])
  num, k = order.shape
  kk = min(k, top_k)
  durations = np.asarray(durations, np.float64)
  rank_ch, c_ch, votes_ch = vote(ranked, True, iou_eps)
  rank_an, _, votes_an = vote(ranked, False, iou_eps)
  charades = is_charades(dataset_name) if vote_weighting == 'dataset' else vote_weighting == 'charades'
  chosen = rank_ch if charades else rank_an
  rows = []
  for n in range(num):
    dur = float(durations[n])
    sec = ranked[n].astype(np.float64) * dur
    top1 = 0 if top1_mode == 'loss' else int(chosen[n])
    row = {'duration_sec': dur,
           'nll_per_proposal': np.asarray(host_outputs['nll'][n]).tolist(),
           'center': np.asarray(host_outputs['center'][n]).tolist(),
           'width': np.asarray(host_outputs['width'][n]).tolist(),
           'rank_order': order[n].tolist(),
           'ranked_windows_norm': ranked[n].tolist(),
           'ranked_windows_sec': sec.tolist(),
           'top1_loss': _pick(0, order[n], ranked[n], dur),
           'top1_vote_charades': dict(_pick(rank_ch[n], order[n], ranked[n], dur), c=c_ch[n].tolist(),
                                      votes=votes_ch[n].tolist()),
           'top1_vote_activitynet': dict(_pick(rank_an[n], order[n], ranked[n], dur), votes=votes_an[n].tolist()),
           'top5_windows_sec': sec[:kk].tolist(),
           'pred_windows_sec': [sec[top1].tolist()] + [sec[r].tolist() for r in range(k) if r != top1],
           # The field names of the fixture's eval/predictions.json (what the weak-MR metrics read).
           'nll': np.asarray(host_outputs['nll'][n]).tolist(), 'ranked_windows_norm_f32': ranked[n].tolist(),
           'top5_sec': sec[:kk].tolist(), 'vote_charades_rank': int(rank_ch[n]),
           'vote_activitynet_rank': int(rank_an[n])}
    for key, values in (extra or {}).items():
      row[key] = values[n]
    rows.append(row)
  return rows
