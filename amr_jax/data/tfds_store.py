"""A converted ArrayRecord store as a TensorFlow Datasets dataset: its TFDS metadata, and TFDS random access to it.

`convert_store` writes the metadata, so `tfds.builder_from_directory(store).as_data_source('video' | 'text')` reads
the same records our `ArrayStore` reads (raw .npy bytes: `deserialize_method=RAW_BYTES`, then `decode_record`).
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

import numpy as np
import tensorflow_datasets as tfds

from amr_jax.data import array_store as store_lib
from amr_jax.data.features import FeatureError

DATASET_NAME = 'amr_jax_features'
FILENAME_TEMPLATE = '{SPLIT}-{SHARD_INDEX}.{FILEFORMAT}'   # = array_store.shard_name: video-00000.array_record
VERSION = '1.0.0'
METADATA_FILES = ('dataset_info.json', 'features.json')   # what write_metadata writes
RAW_BYTES = tfds.decode.DeserializeMethod.RAW_BYTES


def _kind_shards(manifest: dict, kind: str) -> List[dict]:
  """The manifest's shards of one kind, checked to be named 0..n-1 as the TFDS template needs."""
  shards = [s for s in manifest['shards'] if s['kind'] == kind]
  names = [s['file'] for s in shards]
  want = [store_lib.shard_name(kind, i) for i in range(len(shards))]
  if names != want:
    raise FeatureError(store_lib.MANIFEST_FILE, 'shards', f'{kind} shards {names[:3]}... are not numbered '
                       f'{want[:3]}...: the store cannot be described to TFDS')
  return shards


def write_metadata(root: str, manifest: dict) -> None:
  """Writes dataset_info.json and features.json: one TFDS split per kind ('video', 'text'), one shard per file."""
  splits = []
  for kind in store_lib.KINDS:
    shards = _kind_shards(manifest, kind)
    if not shards:
      continue
    template = tfds.core.ShardedFileTemplate(data_dir=os.fspath(root), template=FILENAME_TEMPLATE,
                                             dataset_name=DATASET_NAME, split=kind, filetype_suffix='array_record')
    splits.append(tfds.core.SplitInfo(name=kind, shard_lengths=[int(s['num_records']) for s in shards],
                                      num_bytes=sum(int(s['bytes']) for s in shards), filename_template=template))
  # A record is the .npy bytes of one float32 [L, D] array (not a tf.Example): read with RAW_BYTES.
  features = tfds.features.FeaturesDict({'npy': tfds.features.Tensor(shape=(), dtype=np.object_)})
  tfds.folder_dataset.write_metadata(data_dir=os.fspath(root), features=features, split_infos=splits,
                                     filename_template=FILENAME_TEMPLATE, check_data=False, version=VERSION,
                                     description='amr_jax features: one .npy float32 [L, D] record per vid '
                                                 '(split video) / qid (split text); keys in index.json')


def data_sources(root: str) -> Dict[str, Sequence[bytes]]:
  """{'video': source, 'text': source}: TFDS random-access sources over the store's shards (raw record bytes)."""
  builder = tfds.builder_from_directory(os.fspath(root))
  return {kind: builder.as_data_source(split=kind, deserialize_method=RAW_BYTES) for kind in builder.info.splits}


def global_positions(store: store_lib.ArrayStore, kind: str) -> Dict[object, int]:
  """vid / qid -> its record's position in the TFDS split of `kind` (shards in order, records in order)."""
  shard_ids = [i for i, s in enumerate(store.shards) if s['kind'] == kind]
  offsets = dict(zip(shard_ids, np.concatenate([[0], np.cumsum([store.shards[i]['num_records']
                                                                 for i in shard_ids])]).tolist()))
  keys = store.vids if kind == 'video' else store.qids
  positions = {}
  for key in keys:
    shard, position = store.shard_position(kind, key)
    positions[key] = int(offsets[shard]) + int(position)
  return positions
