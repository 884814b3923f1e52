"""PRVR retrieval metrics (R@1/5/10/100, SumR) exactly as MS-SL / GMMFormer / AMDNet validation computes them.

Ranks from a score matrix, from blocks scored on device, and from submission files (npz scores / jsonl rankings).
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from amr_jax.metrics.common import InputError, SubmissionError, load_jsonl

KS = (1, 5, 10, 100)
# How a GT video tied with other videos ranks. 'stable' is the original: torch.argsort of the negated scores is a
# stable sort for rows of at most 16 videos (and implementation-defined above), so a tied GT ranks behind the tied
# videos of lower index: rank = 1 + #{s > s_gt} + #{j < gt: s_j = s_gt}. NaN sorts last (after every number).
TIE_ORDERS = ('stable', 'optimistic', 'pessimistic')


def _check_tie_order(tie_order: str) -> None:
  if tie_order not in TIE_ORDERS:
    raise ValueError(f'unknown tie_order {tie_order!r}; expected one of {", ".join(TIE_ORDERS)}')


def video_id(cap_id: str) -> str:
  """The GT video of a caption: its id before the first '#' (validations.get_gt)."""
  return cap_id.split('#', 1)[0]


# ----------------------------------------------------------------------------------------------------
# Ranks and recalls
# ----------------------------------------------------------------------------------------------------
def _ahead(xp, scores, s_gt, before, valid, tie_order: str):
  """[Q, V] bool: video j sorts ahead of the GT (the GT column itself must be excluded by `valid` or `before`)."""
  s_nan, gt_nan = xp.isnan(scores), xp.isnan(s_gt)
  greater = scores > s_gt
  equal = scores == s_gt
  if tie_order == 'stable':
    ahead_num = greater | (equal & before)
    ahead_nan = ~s_nan | (s_nan & before)
  elif tie_order == 'optimistic':
    ahead_num = greater
    ahead_nan = ~s_nan
  else:
    ahead_num = greater | equal
    ahead_nan = xp.ones_like(s_nan)
  return xp.where(gt_nan, ahead_nan, ahead_num) & valid


def gt_ranks(scores, gt_index, tie_order: str = 'stable') -> np.ndarray:
  """1-based rank of each caption's GT video among all videos, by descending score.

  A float32 jax.Array (scores already on device) is ranked there: one jitted pass of compares and a row count, no
  sort, no transfer of the matrix. Host arrays are ranked in numpy (a copy to device would cost more than the
  count), in their own dtype, so no value is rounded. Both count exactly the same comparisons.

  Args:
    scores: [Nq, Nv] caption-to-video similarities (video order = the order ties are broken in).
    gt_index: [Nq] int, the GT column of each caption.
    tie_order: 'stable' (the original; see TIE_ORDERS), 'optimistic' (ties rank the GT first) or 'pessimistic'.

  Returns:
    [Nq] int64 ranks in 1..Nv.
  """
  _check_tie_order(tie_order)
  if not isinstance(scores, jax.Array):
    scores = np.asarray(scores)
  gt_index = np.asarray(gt_index, dtype=np.int64)
  if scores.ndim != 2 or gt_index.shape != (scores.shape[0],):
    raise ValueError(f'scores must be [Nq, Nv] and gt_index [Nq]; got {scores.shape} and {gt_index.shape}')
  if len(gt_index) and (gt_index.min() < 0 or gt_index.max() >= scores.shape[1]):
    raise ValueError(f'gt_index out of range for {scores.shape[1]} videos')
  if isinstance(scores, jax.Array) and scores.dtype == jnp.float32 and scores.size:
    return np.asarray(_device_gt_ranks(scores, jnp.asarray(gt_index, jnp.int32), tie_order)).astype(np.int64)
  scores = np.asarray(scores)
  columns = np.arange(scores.shape[1])
  s_gt = np.take_along_axis(scores, gt_index[:, None], axis=1)        # [Nq, 1]
  before = columns[None, :] < gt_index[:, None]                       # [Nq, Nv]
  other = columns[None, :] != gt_index[:, None]
  ahead = _ahead(np, scores, s_gt, before, other, tie_order)
  return 1 + ahead.sum(axis=1).astype(np.int64)


@functools.partial(jax.jit, static_argnums=2)
def _device_gt_ranks(scores, gt_index, tie_order: str):
  """`gt_ranks` of a float32 [Nq, Nv] matrix on device: [Nq] int32 (XLA fuses the compares into the row sum)."""
  columns = jnp.arange(scores.shape[1], dtype=jnp.int32)
  s_gt = jnp.take_along_axis(scores, gt_index[:, None], axis=1)     # [Nq, 1]
  before = columns[None, :] < gt_index[:, None]                     # [Nq, Nv]
  other = columns[None, :] != gt_index[:, None]
  return 1 + _ahead(jnp, scores, s_gt, before, other, tie_order).sum(axis=1, dtype=jnp.int32)


def recall_metrics(ranks, num_queries: Optional[int] = None) -> Dict[str, float]:
  """R@1/5/10/100 and SumR from GT ranks, with the original's float operations.

  R@K = 100.0 * #{rank <= K} / Nq (Python floats, left to right); SumR = 0 + (((R1 + R5) + R10) + R100).
  A rank may be inf (GT absent from a truncated ranking: a miss at every K).
  """
  ranks = np.asarray(ranks, dtype=np.float64)
  n = len(ranks) if num_queries is None else num_queries
  if n == 0:
    raise ValueError('no queries to score')
  out = {}
  for k in KS:
    out[f'R{k}'] = 100.0 * int(np.count_nonzero(ranks <= k)) / n
  total = 0
  total += (out['R1'] + out['R5'] + out['R10'] + out['R100'])
  out['SumR'] = total
  return out


def retrieval_metrics(scores, gt_index, tie_order: str = 'stable') -> Dict[str, float]:
  """`recall_metrics(gt_ranks(scores, gt_index))`."""
  return recall_metrics(gt_ranks(scores, gt_index, tie_order))


def chance_metrics(num_videos: int) -> Dict[str, float]:
  """Expected R@K of a random ranking: 100 * min(K, Nv) / Nv."""
  out = {f'R{k}': 100.0 * min(k, num_videos) / num_videos for k in KS}
  out['SumR'] = out['R1'] + out['R5'] + out['R10'] + out['R100']
  return out


# ----------------------------------------------------------------------------------------------------
# Blocked ranks on device
# ----------------------------------------------------------------------------------------------------
def _leading(tree) -> int:
  sizes = {int(np.shape(x)[0]) for x in jax.tree.leaves(tree)}
  if len(sizes) != 1:
    raise ValueError(f'every leaf needs the same leading (item) axis; got sizes {sorted(sizes)}')
  return sizes.pop()


def _pad_to(tree, size: int):
  """Pads the leading axis to `size` by repeating the last item (finite values; padded items are masked)."""
  def pad(x):
    extra = size - x.shape[0]
    if extra == 0:
      return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)], axis=0)
  return jax.tree.map(pad, tree)


def _blocks(tree, num_blocks: int, block: int):
  return jax.tree.map(lambda x: x.reshape((num_blocks, block) + x.shape[1:]), tree)


def _block_sizes(n: int, block: int) -> Tuple[int, int]:
  block = max(1, min(int(block), n))
  return block, -(-n // block)


def _scan_scores(score_fn, caption_block, video_blocks):
  """[Bq, nVB * Bv]: one caption block against every video block (one block of per-clip scores at a time)."""
  def body(carry, video_block):
    return carry, score_fn(caption_block, video_block)        # [Bq, Bv]
  _, scores = jax.lax.scan(body, None, video_blocks)           # [nVB, Bq, Bv]
  return jnp.transpose(scores, (1, 0, 2)).reshape(scores.shape[1], -1)


def _rows_ranks(score_fn, tie_order, caption_block, gt_block, video_blocks, num_videos):
  scores = _scan_scores(score_fn, caption_block, video_blocks)  # [Bq, Vp]
  columns = jnp.arange(scores.shape[1])
  s_gt = jnp.take_along_axis(scores, gt_block[:, None], axis=1)
  before = columns[None, :] < gt_block[:, None]
  valid = (columns[None, :] < num_videos) & (columns[None, :] != gt_block[:, None])
  return 1 + _ahead(jnp, scores, s_gt, before, valid, tie_order).sum(axis=1, dtype=jnp.int32)


def _running_ranks(score_fn, tie_order, caption_block, gt_block, video_blocks, video_items, num_videos):
  gt_videos = jax.tree.map(lambda x: x[gt_block], video_items)               # [Bq, ...]
  s_gt = jnp.diagonal(score_fn(caption_block, gt_videos))[:, None]           # [Bq, 1]
  block = jax.tree.leaves(video_blocks)[0].shape[1]

  def body(count, inputs):
    offset, video_block = inputs
    scores = score_fn(caption_block, video_block)                           # [Bq, Bv]
    columns = offset + jnp.arange(block)
    before = columns[None, :] < gt_block[:, None]
    valid = (columns[None, :] < num_videos) & (columns[None, :] != gt_block[:, None])
    return count + _ahead(jnp, scores, s_gt, before, valid, tie_order).sum(axis=1, dtype=jnp.int32), None

  num_blocks = jax.tree.leaves(video_blocks)[0].shape[0]
  offsets = jnp.arange(num_blocks, dtype=jnp.int32) * block
  count, _ = jax.lax.scan(body, jnp.zeros(gt_block.shape, jnp.int32), (offsets, video_blocks))
  return 1 + count


def blocked_gt_ranks(score_fn: Callable, caption_items, video_items, gt_index, *, caption_block: int = 256,
                     video_block: int = 256, tie_order: str = 'stable', mode: str = 'rows') -> np.ndarray:
  """GT ranks of every caption, scoring one [caption block x video block] at a time on device.

  One jitted program runs every block (a map over caption blocks of a scan over video blocks): one dispatch and
  one [Nq] transfer back, whatever the number of blocks.

  Args:
    score_fn: jittable (caption block pytree [Bq, ...], video block pytree [Bv, ...]) -> [Bq, Bv] scores, e.g.
      the max over clips of cosines of encoded captions and encoded videos. Only one block of per-clip scores
      ([Bq, Bv, N]) exists at a time.
    caption_items: pytree of arrays with leading axis Nq (encoded captions).
    video_items: pytree of arrays with leading axis Nv (encoded videos, in the tie-breaking order).
    gt_index: [Nq] int GT video of each caption.
    caption_block, video_block: block sizes (fixed shapes: the last blocks are padded and masked).
    tie_order: see `gt_ranks`.
    mode: 'rows' keeps one [Bq, Nv] score row block per caption block and ranks it (exactly `gt_ranks` of the
      same scores); 'running' keeps only a running count per caption ([Bq] ints), with the GT score computed once
      from a [Bq, Bq] GT block. 'running' is exact unless a GT is exactly tied with another video and `score_fn`
      rounds the same pair differently in two block shapes.

  Returns:
    [Nq] int64 ranks.
  """
  _check_tie_order(tie_order)
  if mode not in ('rows', 'running'):
    raise ValueError(f"unknown mode {mode!r}; expected 'rows' or 'running'")
  num_queries, num_videos = _leading(caption_items), _leading(video_items)
  gt_index = np.asarray(gt_index, dtype=np.int32)
  if gt_index.shape != (num_queries,):
    raise ValueError(f'gt_index must be [{num_queries}], got {gt_index.shape}')
  if num_queries and (gt_index.min() < 0 or gt_index.max() >= num_videos):
    raise ValueError(f'gt_index out of range for {num_videos} videos')
  bq, n_cb = _block_sizes(num_queries, caption_block)
  bv, n_vb = _block_sizes(num_videos, video_block)
  fn = _rank_fn(score_fn, tie_order, mode, num_videos, bq, n_cb, bv, n_vb)
  return np.asarray(fn(caption_items, gt_index, video_items))[:num_queries].astype(np.int64)


@functools.lru_cache(maxsize=64)
def _rank_fn(score_fn: Callable, tie_order: str, mode: str, num_videos: int, bq: int, n_cb: int, bv: int,
             n_vb: int):
  """The jitted ranks of every caption block (cached, so repeated evaluations compile once per shape)."""
  def ranks(caption_items, gt_index, video_items):
    captions = _blocks(_pad_to(caption_items, bq * n_cb), n_cb, bq)            # [nCB, Bq, ...]
    gts = jnp.pad(gt_index, (0, bq * n_cb - gt_index.shape[0])).reshape(n_cb, bq)
    videos_flat = _pad_to(video_items, bv * n_vb)
    videos = _blocks(videos_flat, n_vb, bv)                                    # [nVB, Bv, ...]
    if mode == 'rows':
      one = lambda args: _rows_ranks(score_fn, tie_order, args[0], args[1], videos, num_videos)  # noqa: E731
    else:
      one = lambda args: _running_ranks(score_fn, tie_order, args[0], args[1], videos,  # noqa: E731
                                        videos_flat, num_videos)
    return jax.lax.map(one, (captions, gts)).reshape(-1)                       # [nCB * Bq]
  return jax.jit(ranks)


@functools.lru_cache(maxsize=64)
def _scores_fn(score_fn: Callable, num_queries: int, num_videos: int, bq: int, n_cb: int, bv: int, n_vb: int):
  """The jitted [Nq, Nv] score matrix: a map over caption blocks of a scan over video blocks, in one program."""
  def scores(caption_items, video_items):
    captions = _blocks(_pad_to(caption_items, bq * n_cb), n_cb, bq)            # [nCB, Bq, ...]
    videos = _blocks(_pad_to(video_items, bv * n_vb), n_vb, bv)                # [nVB, Bv, ...]
    rows = jax.lax.map(lambda c: _scan_scores(score_fn, c, videos), captions)  # [nCB, Bq, nVB * Bv]
    return rows.reshape(n_cb * bq, n_vb * bv)[:num_queries, :num_videos]
  return jax.jit(scores)


def blocked_scores(score_fn: Callable, caption_items, video_items, *, caption_block: int = 256,
                   video_block: int = 256, to_host: bool = True):
  """The full [Nq, Nv] score matrix (float32), scored block by block in one jitted program (for score files).

  to_host=False leaves it on device (a jax.Array), e.g. for `gt_ranks` without a round trip."""
  num_queries, num_videos = _leading(caption_items), _leading(video_items)
  bq, n_cb = _block_sizes(num_queries, caption_block)
  bv, n_vb = _block_sizes(num_videos, video_block)
  out = _scores_fn(score_fn, num_queries, num_videos, bq, n_cb, bv, n_vb)(caption_items, video_items)
  return np.asarray(out) if to_host else out


def max_cosine_score(caption_emb, video_tokens, eps: float = 1e-12):
  """[Bq, Bv] max over clips of cos(caption, clip): the AMDNet/MS-SL clip score (normalize = x / max(|x|, eps)).

  caption_emb [Bq, d], video_tokens [Bv, N, d]; a `score_fn` for `blocked_gt_ranks`.
  """
  q = caption_emb / jnp.maximum(jnp.linalg.norm(caption_emb, axis=-1, keepdims=True), eps)
  v = video_tokens / jnp.maximum(jnp.linalg.norm(video_tokens, axis=-1, keepdims=True), eps)
  return jnp.einsum('qd,vnd->qvn', q, v).max(axis=-1)


# ----------------------------------------------------------------------------------------------------
# Submission files
# ----------------------------------------------------------------------------------------------------
def read_caption_gt(path) -> Tuple[List[str], List[str]]:
  """(cap_ids in file order, video ids by first appearance) of a `cap_id caption` file (the eval's GT).

  Raises:
    InputError: the file is missing, unreadable or holds no captions.
  """
  path = pathlib.Path(path)
  try:
    lines = path.read_text(encoding='utf-8').split('\n')
  except FileNotFoundError:
    raise InputError(f'{path}: no such caption file') from None
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f'{path}: cannot read ({e})') from None
  cap_ids, videos, seen = [], [], set()
  for line in lines:
    if line.strip():
      cap_id = line.split(None, 1)[0]
      cap_ids.append(cap_id)
      vid = video_id(cap_id)
      if vid not in seen:
        seen.add(vid)
        videos.append(vid)
  if not cap_ids:
    raise InputError(f'{path}: no captions')
  return cap_ids, videos


def _string_array(npz, key: str, name: str, problems: List[str]) -> Optional[List[str]]:
  if key not in npz.files:
    problems.append(f'{name}: field={key}: missing (keys: {", ".join(npz.files)})')
    return None
  try:
    array = npz[key]
  except ValueError:
    problems.append(f'{name}: field={key}: object array; store ids as a unicode array (np.asarray(ids, str))')
    return None
  if array.ndim != 1 or array.dtype.kind not in 'US':
    problems.append(f'{name}: field={key}: expected a 1-D string array, got {array.dtype} {array.shape}')
    return None
  return [x.decode() if isinstance(x, bytes) else str(x) for x in array.tolist()]


def _duplicates(ids: Sequence[str]) -> List[str]:
  seen, out = set(), []
  for x in ids:
    if x in seen and x not in out:
      out.append(x)
    seen.add(x)
  return out


def ranks_from_score_file(path, cap_ids: Sequence[str], videos: Sequence[str], *, tie_order: str = 'stable',
                          caption_name: str = 'captions') -> np.ndarray:
  """GT ranks from an npz `scores [Ncap, Nvid]`, `cap_ids [Ncap]`, `vid_ids [Nvid]` (see `ranks_from_scores`).

  Raises:
    InputError: unreadable npz. SubmissionError: every other problem, one line each.
  """
  name = pathlib.Path(path).name
  try:
    npz = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise InputError(f'{path}: no such score file') from None
  except (OSError, ValueError) as e:
    raise InputError(f'{path}: not a readable npz ({e})') from None
  problems: List[str] = []
  with npz:
    file_caps = _string_array(npz, 'cap_ids', name, problems)
    file_vids = _string_array(npz, 'vid_ids', name, problems)
    scores = npz['scores'] if 'scores' in npz.files else None
  if scores is None:
    problems.append(f'{name}: field=scores: missing')
  elif scores.dtype.kind not in 'fiu' or scores.ndim != 2:
    problems.append(f'{name}: field=scores: expected a 2-D numeric array, got {scores.dtype} {scores.shape}')
  if problems:
    raise SubmissionError(problems)
  return ranks_from_scores(scores, file_caps, file_vids, cap_ids, videos, tie_order=tie_order, name=name,
                           caption_name=caption_name)


def ranks_from_scores(scores, score_caps: Sequence[str], score_vids: Sequence[str], cap_ids: Sequence[str],
                      videos: Sequence[str], *, tie_order: str = 'stable', name: str = 'scores',
                      caption_name: str = 'captions') -> np.ndarray:
  """GT ranks of a score matrix whose rows are `score_caps` and columns `score_vids`.

  Rows and columns are aligned to the ground truth (captions `cap_ids` in file order, `videos` by first
  appearance), so ties break by the caption file's video order, as in the original. Every caption and every video
  of the ground truth must be there exactly once, with no others, and no score may be NaN.

  Raises:
    SubmissionError: every problem, one line each (`name` names the submission, `caption_name` the GT file).
  """
  if not isinstance(scores, jax.Array):   # a device matrix (the port's own predictions) stays on device
    scores = np.asarray(scores)
  if np.dtype(scores.dtype).kind not in 'fiu' or scores.ndim != 2:
    raise SubmissionError([f'{name}: field=scores: expected a 2-D numeric array, got {scores.dtype} '
                           f'{scores.shape}'])
  score_caps, score_vids = list(score_caps), list(score_vids)
  if scores.shape != (len(score_caps), len(score_vids)):
    raise SubmissionError([f'{name}: field=scores: shape {scores.shape} does not match {len(score_caps)} cap_ids '
                           f'x {len(score_vids)} vid_ids'])
  if score_caps == list(cap_ids) and score_vids == list(videos):
    aligned = scores   # already in ground-truth order (the port's own predictions): nothing to check or copy
  else:
    problems = [f'{name}: cap_id={c}: duplicate cap_id' for c in _duplicates(score_caps)]
    problems += [f'{name}: vid={v}: duplicate vid_id' for v in _duplicates(score_vids)]
    cap_set, vid_set = set(cap_ids), set(videos)
    file_cap_set, file_vid_set = set(score_caps), set(score_vids)
    problems += [f'{name}: cap_id={c}: unknown caption (not in {caption_name})' for c in score_caps
                 if c not in cap_set]
    problems += [f'{name}: cap_id={c}: missing (in {caption_name} but not in the score file)'
                 for c in cap_ids if c not in file_cap_set]
    problems += [f'{name}: vid={v}: unknown video (not in {caption_name})' for v in score_vids if v not in vid_set]
    problems += [f'{name}: vid={v}: missing (a video of {caption_name} not in the score file)'
                 for v in videos if v not in file_vid_set]
    if problems:
      raise SubmissionError(problems)
    row = {c: i for i, c in enumerate(score_caps)}
    col = {v: j for j, v in enumerate(score_vids)}
    aligned = np.asarray(scores)[np.asarray([row[c] for c in cap_ids])][:, np.asarray([col[v] for v in videos])]
  if isinstance(aligned, jax.Array):
    nan_rows = np.flatnonzero(np.asarray(_nan_rows(aligned)))
  else:
    nan_rows = np.flatnonzero(np.isnan(aligned).any(axis=1)) if aligned.dtype.kind == 'f' else []
  if len(nan_rows):
    raise SubmissionError([f'{name}: cap_id={cap_ids[i]}: field=scores: NaN score(s)' for i in nan_rows])
  vindex = {v: j for j, v in enumerate(videos)}
  gt = np.asarray([vindex[video_id(c)] for c in cap_ids])
  return gt_ranks(aligned, gt, tie_order)


@jax.jit
def _nan_rows(scores):
  """[Nq] bool: the rows of a device score matrix holding a NaN."""
  return jnp.isnan(scores).any(axis=1)


def ranks_from_ranking_file(path, cap_ids: Sequence[str], videos: Sequence[str], *,
                            caption_name: str = 'captions') -> np.ndarray:
  """GT ranks from jsonl rows `{"cap_id": .., "ranked_vids": [best first, ...]}`, one row per caption.

  A ranking may be cut short but must hold at least min(100, Nv) videos (so R@100 is defined); a GT missing from
  a cut ranking is a miss (rank inf). Unknown, duplicate and missing ids are problems.

  Raises:
    InputError: unreadable file or a line that is not JSON. SubmissionError: every other problem, one line each.
  """
  rows, lines = load_jsonl(path)
  name = pathlib.Path(path).name
  problems: List[str] = []
  vid_set = set(videos)
  need = min(100, len(videos))
  rank_of: Dict[str, float] = {}
  first_line: Dict[str, int] = {}
  cap_set = set(cap_ids)
  for row, line in zip(rows, lines):
    where = f'{name}:{line}'
    if not isinstance(row, dict):
      problems.append(f'{where}: row is not a JSON object')
      continue
    cap_id, ranked = row.get('cap_id'), row.get('ranked_vids')
    if not isinstance(cap_id, str):
      problems.append(f'{where}: field=cap_id: missing or not a string')
      continue
    if cap_id in first_line:
      problems.append(f'{where}: cap_id={cap_id}: duplicate cap_id (first at line {first_line[cap_id]})')
      continue
    first_line[cap_id] = line
    if cap_id not in cap_set:
      problems.append(f'{where}: cap_id={cap_id}: unknown caption (not in {caption_name})')
      continue
    if not isinstance(ranked, list) or not all(isinstance(v, str) for v in ranked):
      problems.append(f'{where}: cap_id={cap_id}: field=ranked_vids: missing or not a list of strings')
      continue
    unknown = [v for v in ranked if v not in vid_set]
    dups = _duplicates(ranked)
    if unknown:
      problems.append(f'{where}: cap_id={cap_id}: field=ranked_vids: {len(unknown)} unknown video(s) '
                      f'(first: {unknown[0]})')
    if dups:
      problems.append(f'{where}: cap_id={cap_id}: field=ranked_vids: {len(dups)} repeated video(s) (first: {dups[0]})')
    if len(ranked) < need:
      problems.append(f'{where}: cap_id={cap_id}: field=ranked_vids: {len(ranked)} videos; at least {need} needed '
                      'for R@100')
    if unknown or dups or len(ranked) < need:
      continue
    gt = video_id(cap_id)
    rank_of[cap_id] = float(ranked.index(gt) + 1) if gt in ranked else float('inf')
  problems += [f'{name}: cap_id={c}: missing (in {caption_name} but not in the ranking file)'
               for c in cap_ids if c not in first_line]
  if problems:
    raise SubmissionError(problems)
  return np.asarray([rank_of[c] for c in cap_ids])


def evaluate_file(prediction_path, caption_path, *, tie_order: str = 'stable') -> Dict[str, Any]:
  """R@1/5/10/100 and SumR of a score file (.npz) or a ranking file (.jsonl) against a caption file.

  Returns:
    {'R1', 'R5', 'R10', 'R100', 'SumR', 'num_captions', 'num_videos'}.

  Raises:
    InputError: a file is missing or unreadable. SubmissionError: validation failed (`.problems`, one line each).
  """
  cap_ids, videos = read_caption_gt(caption_path)
  return evaluate_ids(prediction_path, cap_ids, videos, tie_order=tie_order,
                      caption_name=pathlib.Path(caption_path).name)


def evaluate_ids(prediction_path, cap_ids: Sequence[str], videos: Sequence[str], *, tie_order: str = 'stable',
                 caption_name: str = 'captions') -> Dict[str, Any]:
  """`evaluate_file` against given ground truth: cap_ids in file order and their videos by first appearance."""
  suffix = pathlib.Path(prediction_path).suffix.lower()
  if suffix == '.npz':
    ranks = ranks_from_score_file(prediction_path, cap_ids, videos, tie_order=tie_order, caption_name=caption_name)
  elif suffix in ('.jsonl', '.json'):
    ranks = ranks_from_ranking_file(prediction_path, cap_ids, videos, caption_name=caption_name)
  else:
    raise InputError(f'{prediction_path}: unknown prediction format {suffix!r}; expected .npz (scores) or '
                     '.jsonl (rankings)')
  result: Dict[str, Any] = recall_metrics(ranks)
  result.update(num_captions=len(cap_ids), num_videos=len(videos))
  return result


def write_score_file(path, scores, cap_ids: Sequence[str], vid_ids: Sequence[str]) -> None:
  """Writes the npz submission format: scores [Ncap, Nvid] float32, cap_ids, vid_ids (unicode arrays)."""
  scores = np.asarray(scores, dtype=np.float32)
  if scores.shape != (len(cap_ids), len(vid_ids)):
    raise ValueError(f'scores {scores.shape} do not match {len(cap_ids)} cap_ids x {len(vid_ids)} vid_ids')
  if os.path.dirname(os.fspath(path)):
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
  np.savez(path, scores=scores, cap_ids=np.asarray(cap_ids, dtype=str), vid_ids=np.asarray(vid_ids, dtype=str))


def write_ranking_file(path, scores, cap_ids: Sequence[str], vid_ids: Sequence[str], top_k: int = 100) -> None:
  """Writes the jsonl submission format: per caption its top `top_k` videos (stable descending order)."""
  scores = np.asarray(scores)
  order = np.argsort(-scores, axis=1, kind='stable')[:, :top_k]
  with open(path, 'w', encoding='utf-8') as f:
    for i, cap_id in enumerate(cap_ids):
      f.write(json.dumps({'cap_id': cap_id, 'ranked_vids': [vid_ids[j] for j in order[i]]}) + '\n')
