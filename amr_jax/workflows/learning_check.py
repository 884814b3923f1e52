"""The proof that the recipe learns: stage 1 -> stage 2 on planted features, real queries vs a shuffled control.

Builds a planted store from the first N QVHighlights train/val queries (tiny dims) and trains both arms the same way.
"""
from __future__ import annotations

import importlib
import json
import pathlib
import time

from amr_jax.data import annotations, planted
from amr_jax.train import loop

ANNOTATIONS = pathlib.Path(__file__).resolve().parents[2] / 'data' / 'annotations' / 'qvhighlights'
REPORTED = ('MR-full-R1@0.5', 'MR-full-R1@0.7', 'MR-full-mAP', 'HL-min-VeryGood-mAP', 'HL-min-VeryGood-Hit1')


def tiny_config(module_name: str, store_dir, train_path, val_path, **overrides):
  """configs/<module_name>.py:tiny pointed at a planted store, with dotted-key overrides."""
  config = importlib.import_module(f'configs.{module_name}').get_config('tiny')
  with config.unlocked():
    config.data.feature_dir = str(store_dir)
    config.data.train_annotations = str(train_path)
    config.data.val_annotations = str(val_path) if val_path else ''
    for key, value in overrides.items():
      node = config
      *path, leaf = key.split('.')
      for part in path:
        node = node[part]
      node[leaf] = value
  return config


def build_store(root: pathlib.Path, num_train: int, num_val: int, seed: int = 0) -> tuple[list, list]:
  """The first `num_train` train and `num_val` val queries, as jsonl files plus their planted store."""
  root.mkdir(parents=True, exist_ok=True)
  train = annotations.load_annotations(ANNOTATIONS / 'highlight_train_release.jsonl')[:num_train]
  val = annotations.load_annotations(ANNOTATIONS / 'highlight_val_release.jsonl')[:num_val]
  annotations.write_jsonl(train, root / 'train.jsonl')
  annotations.write_jsonl(val, root / 'val.jsonl')
  planted.write_planted_store(train + val, str(root / 'store'), seed=seed, dims='tiny')
  return train, val


def run(root, num_train: int, num_val: int, steps1: int, steps2: int, batch: int = 32,
        num_devices: int = 1) -> dict:
  """{'real'|'control': {'stage1'|'stage2': metrics}, 'seconds': ..}; workdirs and the store live under `root`."""
  root = pathlib.Path(root)
  start = time.time()
  train, val = build_store(root, num_train, num_val)
  common = {'train.batch_size': batch, 'train.num_devices': num_devices}
  result = {}
  paths = (root / 'store', root / 'train.jsonl', root / 'val.jsonl')
  for arm, shuffle in (('real', False), ('control', True)):
    s1 = loop.train_and_evaluate(tiny_config('amr_stage1', *paths, **common, **{
        'train.num_steps': steps1, 'train.checkpoint_every': steps1, 'data.shuffle_queries': shuffle}),
                                 str(root / f'{arm}_s1'))
    s2 = loop.train_and_evaluate(tiny_config('amr_stage2', *paths, **common, **{
        'train.num_steps': steps2, 'train.checkpoint_every': steps2, 'data.shuffle_queries': shuffle,
        'init.stage1_workdir': str(root / f'{arm}_s1')}), str(root / f'{arm}_s2'))
    result[arm] = {'stage1': {k: s1[k] for k in REPORTED if k in s1},
                   'stage2': {k: s2[k] for k in REPORTED if k in s2}}
  # What "chance" means here: a query-blind model that finds every planted span still has to guess among them.
  result['query_blind_r1'] = {k: round(v, 2) for k, v in planted.query_blind_r1(val, train + val).items()}
  result['seconds'] = round(time.time() - start, 1)
  (root / 'learning_check.json').write_text(json.dumps(result, indent=2))
  return result


def table(result: dict) -> str:
  rows = ['| arm | stage | ' + ' | '.join(REPORTED) + ' |', '|---|---|' + '---|' * len(REPORTED)]
  for arm in ('real', 'control'):
    for stage in ('stage1', 'stage2'):
      rows.append(f'| {arm} | {stage} | ' + ' | '.join(str(result[arm][stage].get(k, '')) for k in REPORTED)
                  + ' |')
  blind = result.get('query_blind_r1')
  if blind:
    rows.append(f"| query-blind ceiling (perfect span finder, random / longest span) | - | "
                f"{blind['uniform']} / {blind['longest']} |" + ' |' * (len(REPORTED) - 1))
  return '\n'.join(rows)
