"""PRVR batches as the original builds them: B videos with ALL their captions, fixed padded shapes, deterministic.

The global batch of step s is a pure function of (seed, s); evaluation gets video blocks and caption blocks.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from amr_jax import task as task_lib
from amr_jax.data import prvr
from data_pipelines.batches import epoch_permutation, local_slice, seeded_rng

CAPTION_OVERFLOWS = ('error', 'truncate', 'sample')
FRAME_OVERFLOWS = ('error', 'sample')
LAST_BATCHES = ('pad', 'drop')


@dataclasses.dataclass(frozen=True)
class PrvrBatchConfig:
  """How a PRVR split becomes fixed-shape batches (defaults = the original AMDNet data path).

  Attributes:
    max_captions_per_video: C caption slots per video; 0 = the split's largest count (the original keeps every
      caption of a video in its batch, so nothing is dropped).
    caption_overflow: a video with more than C captions: 'error' (one line naming it), 'truncate' (its first C
      in file order) or 'sample' (C of them, drawn per step from (seed, step, row)).
    max_frames: L frame slots per video; 0 = the split's longest video (every frame kept: the model's clip
      averaging then sees what the original's sees).
    frame_overflow: a video longer than L: 'error' or 'sample' (the original frame-branch rule
      `uniform_feature_sampling`; clip averaging of the sampled frames then differs from the original).
    max_ctx_l: the original's frame-branch cap (128): only the sort key of `sort_by_frames`.
    sort_by_frames: quirk: collate_train orders a batch by min(frames, max_ctx_l), descending, stable.
    last_batch: 'pad' (the original's DataLoader keeps the short last batch of an epoch: here it is padded with
      rows of sample_valid 0) or 'drop' (every step full; the remainder of an epoch is skipped).
    text_kind: 'sentence' (caption_feat [.., Dq], AMDNet) or 'tokens' ([.., T, Dq] + caption_token_mask, MS-SL).
    max_desc_l: T, tokens kept per caption (MS-SL cuts at 30).
    l2_normalize: divide every frame and text vector by (its norm + 1e-5) (MS-SL/GMMFormer); AMDNet: False.
  """
  max_captions_per_video: int = 0
  caption_overflow: str = 'error'
  max_frames: int = 0
  frame_overflow: str = 'error'
  max_ctx_l: int = 128
  sort_by_frames: bool = True
  last_batch: str = 'pad'
  text_kind: str = 'sentence'
  max_desc_l: int = 30
  l2_normalize: bool = False

  def __post_init__(self):
    for name, value, allowed in (('caption_overflow', self.caption_overflow, CAPTION_OVERFLOWS),
                                 ('frame_overflow', self.frame_overflow, FRAME_OVERFLOWS),
                                 ('last_batch', self.last_batch, LAST_BATCHES),
                                 ('text_kind', self.text_kind, ('sentence', 'tokens'))):
      if value not in allowed:
        raise ValueError(f'{name}={value!r}: expected one of {", ".join(allowed)}')

  @classmethod
  def from_config(cls, config) -> 'PrvrBatchConfig':
    """From a mapping / ConfigDict with any subset of these field names (others are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: config[k] for k in names if k in config})


def l2_normalize(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
  """x / (||x|| + eps) along the last axis (the MS-SL `l2_normalize_np_array`)."""
  return x / (np.linalg.norm(x, axis=-1, keepdims=True) + np.float32(eps))


# GENERIC-OP: the repos' `uniform_feature_sampling` (frame branch), host side, for videos longer than max_frames.
def uniform_feature_sampling(frames: np.ndarray, max_len: int) -> np.ndarray:
  """[min(F, max_len), D]: bounds round(i * F / max_len) (float64, half to even), clamped to F - 1; each output
  frame is the mean of its range, or the single bound frame when the range is empty."""
  count = frames.shape[0]
  if count <= max_len:
    return frames
  bounds = np.round(np.arange(0, max_len + 1, 1.0) / max_len * count).astype(np.int32)
  bounds[bounds > count - 1] = count - 1
  out = [frames[s:e].mean(axis=0) if s < e else frames[s] for s, e in zip(bounds[:-1], bounds[1:])]
  return np.asarray(out, dtype=frames.dtype)


class PrvrSplit:
  """A validated collection with its features in memory, and the fixed shapes every batch of it has.

  Attributes:
    collection: the captions and videos (video order = first appearance, the original's).
    config: the batch config; `num_caption_slots` (C), `num_frame_slots` (L), `video_dim`, `text_dim` resolved.
    frames: per video [F', Dv] float32 (after sampling / normalisation), `num_frames` [Nv] the stored counts.
    texts: per caption [Dq] or [T', Dq] float32.
    text_of: None, or [Ncap] ints: caption i is given the text features of caption text_of[i] (the
      shuffled-caption control; ids, videos and ground truth stay those of caption i).
  """

  def __init__(self, collection: prvr.PrvrCollection, store: prvr.PrvrStore, config: PrvrBatchConfig):
    """Reads every feature once.

    Raises:
      PrvrDataError: a video has more captions than C, or more frames than L, with overflow 'error'; or the text
        features have the wrong rank for `text_kind` (every such problem, one line each).
    """
    if not len(collection):
      raise prvr.PrvrDataError([prvr.PrvrProblem(collection.source or '<collection>', 'file', 'no captions')])
    self.collection = collection
    self.config = config
    self.text_of: Optional[np.ndarray] = None
    problems: List[prvr.PrvrProblem] = []
    raw = [store.video(vid) for vid in collection.video_ids]
    self.num_frames = np.asarray([len(x) for x in raw], dtype=np.int64)                 # [Nv]
    self.num_frame_slots = int(config.max_frames or self.num_frames.max())
    self.frames: List[np.ndarray] = []
    for vid, x in zip(collection.video_ids, raw):
      if len(x) > self.num_frame_slots:
        if config.frame_overflow == 'error':
          problems.append(prvr.PrvrProblem(store.video_source.source(vid), 'video',
                                           f'{len(x)} frames > max_frames={self.num_frame_slots} '
                                           "(raise max_frames, or frame_overflow='sample')", vid=vid,
                                           scope=prvr.SCOPE_VIDEO))
        x = uniform_feature_sampling(x, self.num_frame_slots)
      self.frames.append(l2_normalize(x) if config.l2_normalize else x)
    counts = np.asarray([len(c) for c in collection.video_captions])
    self.num_caption_slots = int(config.max_captions_per_video or counts.max())
    if config.caption_overflow == 'error':
      for i in np.flatnonzero(counts > self.num_caption_slots):
        vid = collection.video_ids[i]
        problems.append(prvr.PrvrProblem(collection.source, 'caption',
                                         f'{counts[i]} captions > max_captions_per_video={self.num_caption_slots} '
                                         "(the original keeps all: raise it, or caption_overflow='truncate'|"
                                         "'sample')", vid=vid, scope=prvr.SCOPE_VIDEO))
    self.texts: List[np.ndarray] = []
    want = 1 if config.text_kind == 'sentence' else 2
    for caption in collection.captions:
      t = store.text(caption.cap_id)
      if want == 1 and t.ndim == 2 and t.shape[0] == 1:
        t = t[0]                                        # a [1, D] sentence vector
      if t.ndim != want:
        problems.append(prvr.PrvrProblem(store.text_source.source(caption.cap_id), 'text',
                                         f'shape {t.shape} does not fit text_kind={config.text_kind!r}',
                                         vid=caption.vid, cap_id=caption.cap_id, scope=prvr.SCOPE_TEXT))
        continue
      if config.l2_normalize:
        t = l2_normalize(t)
      if want == 2:
        t = t[:config.max_desc_l]
      self.texts.append(t)
    if problems:
      raise prvr.PrvrDataError(problems)
    self.video_dim = int(self.frames[0].shape[-1])
    self.text_dim = int(self.texts[0].shape[-1])
    self.num_token_slots = (int(min(config.max_desc_l, max(len(t) for t in self.texts)))
                            if want == 2 else 0)

  def __len__(self) -> int:
    """Training examples: videos."""
    return self.collection.num_videos

  # -- one row ----------------------------------------------------------------------------------------
  def video_row(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
    """(video_feat [L, Dv], video_mask [L]) of video `index`, valid frames first, zero padded."""
    x = self.frames[index]
    feat = np.zeros((self.num_frame_slots, self.video_dim), np.float32)
    mask = np.zeros(self.num_frame_slots, np.float32)
    feat[:len(x)] = x
    mask[:len(x)] = 1.0
    return feat, mask

  def caption_row(self, index: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(caption_feat [Dq] or [T, Dq], caption_token_mask None or [T]) of caption `index` (its own text
    features, or those of caption text_of[index] in the shuffled-caption control)."""
    t = self.texts[index if self.text_of is None else int(self.text_of[index])]
    if self.config.text_kind == 'sentence':
      return t.astype(np.float32), None
    feat = np.zeros((self.num_token_slots, self.text_dim), np.float32)
    mask = np.zeros(self.num_token_slots, np.float32)
    feat[:len(t)] = t
    mask[:len(t)] = 1.0
    return feat, mask

  def captions_of(self, video: int, rng: Optional[np.random.Generator]) -> List[int]:
    """The caption indices of a video that fill its C slots (all of them unless it overflows)."""
    caps = self.collection.video_captions[video]
    c = self.num_caption_slots
    if len(caps) <= c:
      return caps
    if self.config.caption_overflow == 'sample' and rng is not None:
      return [caps[i] for i in sorted(rng.choice(len(caps), c, replace=False))]
    return caps[:c]

  def frame_branch_length(self, video: int) -> int:
    return int(min(self.num_frames[video], self.config.max_ctx_l))

  def shuffle_texts(self, text_of: np.ndarray) -> None:
    """The shuffled-caption control: caption i reads the text features of caption text_of[i] from now on."""
    text_of = np.asarray(text_of, np.int64)
    if text_of.shape != (len(self.collection),) or (len(text_of) and (text_of.min() < 0 or
                                                                     text_of.max() >= len(self.texts))):
      raise ValueError(f'text_of must be [{len(self.collection)}] caption indices, got {text_of.shape}')
    self.text_of = text_of

  # -- specs -----------------------------------------------------------------------------------------
  def train_spec(self) -> Dict[str, Tuple[tuple, str]]:
    """name -> (per-example shape, dtype) of every train batch entry."""
    cap = ((self.num_caption_slots, self.text_dim) if self.config.text_kind == 'sentence'
           else (self.num_caption_slots, self.num_token_slots, self.text_dim))
    spec = {'video_feat': ((self.num_frame_slots, self.video_dim), 'float32'),
            'video_mask': ((self.num_frame_slots,), 'float32'),
            'caption_feat': (cap, 'float32'),
            'caption_mask': ((self.num_caption_slots,), 'float32'),
            'sample_valid': ((), 'float32')}
    if self.config.text_kind == 'tokens':
      spec['caption_token_mask'] = ((self.num_caption_slots, self.num_token_slots), 'float32')
    return spec


# ----------------------------------------------------------------------------------------------------
# Training batches
# ----------------------------------------------------------------------------------------------------
def steps_per_epoch(num_videos: int, global_batch: int, last_batch: str = 'pad') -> int:
  """ceil(Nv / B) with 'pad' (the original's DataLoader, drop_last=False), floor (at least 1) with 'drop'."""
  if last_batch == 'pad':
    return max(1, -(-num_videos // global_batch))
  return max(1, num_videos // global_batch)


def train_indices(seed: int, step: int, num_videos: int, global_batch: int,
                  last_batch: str = 'pad') -> Tuple[np.ndarray, np.ndarray]:
  """(video indices [B], valid [B] bool) of the global batch of `step`: shuffled epochs without replacement.

  'pad': the epoch's last batch holds the remainder and is filled up with invalid rows (copies of its first
  video); 'drop': the remainder is skipped (a split smaller than B wraps around its permutation).
  """
  spe = steps_per_epoch(num_videos, global_batch, last_batch)
  epoch, pos = divmod(step, spe)
  perm = epoch_permutation(seed, epoch, num_videos)
  if last_batch == 'drop' and num_videos < global_batch:
    return np.resize(perm, global_batch), np.ones(global_batch, bool)
  chunk = perm[pos * global_batch:(pos + 1) * global_batch]
  valid = np.zeros(global_batch, bool)
  valid[:len(chunk)] = True
  return np.concatenate([chunk, np.full(global_batch - len(chunk), chunk[0], chunk.dtype)]), valid


def order_rows(split: PrvrSplit, indices: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Batch row order of fetched videos: the valid ones sorted by frame-branch length min(F, max_ctx_l),
  descending and stable (quirk `sort_by_frames`, as collate_train), padding rows last."""
  if not split.config.sort_by_frames:
    return np.asarray(indices)
  real = np.asarray(indices)[valid]
  order = sorted(range(len(real)), key=lambda k: -split.frame_branch_length(int(real[k])))
  return np.concatenate([real[order], np.asarray(indices)[~valid]])


def global_batch_order(split: PrvrSplit, seed: int, step: int, global_batch: int) -> Tuple[np.ndarray, np.ndarray]:
  """(video indices [B], valid [B]) of the global batch of `step` in batch row order (see `order_rows`)."""
  indices, valid = train_indices(seed, step, len(split), global_batch, split.config.last_batch)
  return order_rows(split, indices, valid), valid


def make_train_batch(split: PrvrSplit, seed: int, step: int, global_batch: int, process_index: int = 0,
                     process_count: int = 1) -> Dict[str, np.ndarray]:
  """This process's rows of the global batch of `step`.

  Entries: video_feat [b, L, Dv], video_mask [b, L], caption_feat [b, C, Dq] (tokens: [b, C, T, Dq] and
  caption_token_mask [b, C, T]), caption_mask [b, C] (1 = a real caption of that video), sample_valid [b].
  Padding rows (sample_valid 0) copy a real row's video and have no captions (caption_mask 0).
  """
  indices, valid = global_batch_order(split, seed, step, global_batch)
  rows = local_slice(global_batch, process_index, process_count)
  return _stack_rows(split, [(int(indices[r]), bool(valid[r]), seeded_rng(seed, 'prvr-captions', step, r))
                             for r in range(rows.start, rows.stop)])


def _stack_rows(split: PrvrSplit, rows) -> Dict[str, np.ndarray]:
  c = split.num_caption_slots
  tokens = split.config.text_kind == 'tokens'
  out: Dict[str, List[np.ndarray]] = {k: [] for k in split.train_spec()}
  for video, is_valid, rng in rows:
    feat, mask = split.video_row(video)
    cap_shape = (c, split.num_token_slots, split.text_dim) if tokens else (c, split.text_dim)
    cap_feat = np.zeros(cap_shape, np.float32)
    cap_mask = np.zeros(c, np.float32)
    tok_mask = np.zeros((c, split.num_token_slots), np.float32) if tokens else None
    if is_valid:
      for slot, caption in enumerate(split.captions_of(video, rng)):
        cap_feat[slot], token_mask = split.caption_row(caption)
        cap_mask[slot] = 1.0
        if tokens:
          tok_mask[slot] = token_mask
    out['video_feat'].append(feat)
    out['video_mask'].append(mask)
    out['caption_feat'].append(cap_feat)
    out['caption_mask'].append(cap_mask)
    out['sample_valid'].append(np.float32(is_valid))
    if tokens:
      out['caption_token_mask'].append(tok_mask)
  return {k: np.stack(v) for k, v in out.items()}


def array_specs(spec: Dict[str, Tuple[tuple, str]]) -> Dict[str, task_lib.ArraySpec]:
  """name -> (shape, dtype) as the contract's `ArraySpec`s."""
  return {k: task_lib.ArraySpec(tuple(shape), str(dtype)) for k, (shape, dtype) in spec.items()}


class PrvrTrainData(task_lib.TrainData):
  """The training side of the task contract over a `PrvrSplit`: one example = one video with all its captions."""

  def __init__(self, split: PrvrSplit):
    self.split = split
    self.spec = array_specs(split.train_spec())

  def __len__(self) -> int:
    return len(self.split)

  def steps_per_epoch(self, global_batch: int) -> int:
    return steps_per_epoch(len(self.split), global_batch, self.split.config.last_batch)

  def batch(self, seed: int, step: int, global_batch: int, process_index: int = 0, process_count: int = 1,
            indices: Optional[np.ndarray] = None) -> dict:
    """This process's rows of the global batch of `step` (shuffled epochs; `indices` = given global videos)."""
    if indices is None:
      return make_train_batch(self.split, seed, step, global_batch, process_index, process_count)
    indices = np.asarray(indices, np.int64)
    valid = np.ones(len(indices), bool)
    order = order_rows(self.split, indices, valid)
    rows = local_slice(global_batch, process_index, process_count)
    return _stack_rows(self.split, [(int(order[r]), True, seeded_rng(seed, 'prvr-captions', step, r))
                                    for r in range(rows.start, rows.stop)])

  def batch_video_ids(self, seed: int, step: int, global_batch: int) -> List[Optional[str]]:
    """The video id of every global row of `step` (None for padding rows): for logs and debugging."""
    indices, valid = global_batch_order(self.split, seed, step, global_batch)
    return [self.split.collection.video_ids[int(i)] if v else None for i, v in zip(indices, valid)]

  def sample_order(self, seed, global_batch, num_steps):
    del seed, global_batch, num_steps
    return None


# ----------------------------------------------------------------------------------------------------
# Evaluation blocks
# ----------------------------------------------------------------------------------------------------
def _block_rows(total: int, block: int, process_index: int, process_count: int) -> Iterator[Tuple[list, list]]:
  """(item indices, valid flags) of this process's rows of every global block; the last block is padded."""
  rows = local_slice(block, process_index, process_count)
  for start in range(0, total, block):
    items = list(range(start, min(start + block, total)))
    valid = [True] * len(items) + [False] * (block - len(items))
    items = items + [items[0]] * (block - len(items))
    yield items[rows], valid[rows]


def video_blocks(split: PrvrSplit, block_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[Dict[str, np.ndarray]]:
  """Every video once, in collection order: video_feat [b, L, Dv], video_mask [b, L], video_index [b] int32,
  sample_valid [b] (0 on the copies that pad the last block)."""
  for items, valid in _block_rows(len(split), block_size, process_index, process_count):
    feats, masks = zip(*(split.video_row(i) for i in items))
    yield {'video_feat': np.stack(feats), 'video_mask': np.stack(masks),
           'video_index': np.asarray(items, np.int32), 'sample_valid': np.asarray(valid, np.float32)}


def caption_blocks(split: PrvrSplit, block_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[Dict[str, np.ndarray]]:
  """Every caption once, in file order: caption_feat [b, Dq] (tokens: [b, T, Dq] + caption_token_mask [b, T]),
  caption_index [b] int32, gt_video_index [b] int32 (the caption's video in `video_blocks` order),
  sample_valid [b]."""
  gt = split.collection.caption_video
  for items, valid in _block_rows(len(split.collection), block_size, process_index, process_count):
    rows = [split.caption_row(i) for i in items]
    block = {'caption_feat': np.stack([r[0] for r in rows]), 'caption_index': np.asarray(items, np.int32),
             'gt_video_index': gt[items].astype(np.int32), 'sample_valid': np.asarray(valid, np.float32)}
    if split.config.text_kind == 'tokens':
      block['caption_token_mask'] = np.stack([r[1] for r in rows])
    yield block


class PrvrEvalData(task_lib.EvalData):
  """The evaluation side: video blocks and caption blocks of one split, and its ground truth.

  `ground_truth` = {'cap_ids', 'video_ids', 'gt_video_index'} (None with with_labels=False; the ids are in
  `cap_ids` / `video_ids` either way); `batches(b)` yields caption blocks (the contract's per-sample view),
  `video_blocks(b)` the videos, and `videos()` the same as an EvalData of its own (for a BatchRunner).
  """

  def __init__(self, split: PrvrSplit, with_labels: bool = True):
    self.split = split
    self.cap_ids = split.collection.cap_ids
    self.video_ids = list(split.collection.video_ids)
    self.ground_truth = ({'cap_ids': self.cap_ids, 'video_ids': self.video_ids,
                          'gt_video_index': split.collection.caption_video.copy()} if with_labels else None)
    self.spec = task_lib.spec_of(next(caption_blocks(split, 1)))

  def __len__(self) -> int:
    return len(self.split.collection)

  def batches(self, batch_size: int, process_index: int = 0, process_count: int = 1):
    return caption_blocks(self.split, batch_size, process_index, process_count)

  def video_blocks(self, batch_size: int, process_index: int = 0, process_count: int = 1):
    return video_blocks(self.split, batch_size, process_index, process_count)

  def videos(self) -> 'PrvrVideoData':
    return PrvrVideoData(self.split)


class PrvrVideoData(task_lib.EvalData):
  """Every video of a split once, as an EvalData (`batches` = `video_blocks`), for a corpus task's BatchRunner."""

  def __init__(self, split: PrvrSplit):
    self.split = split
    self.ground_truth = None
    self.spec = task_lib.spec_of(next(video_blocks(split, 1)))

  def __len__(self) -> int:
    return len(self.split)

  def batches(self, batch_size: int, process_index: int = 0, process_count: int = 1):
    return video_blocks(self.split, batch_size, process_index, process_count)
