"""The AMDNet chain on the embedded default (a planted Charades-STA PRVR store), end to end, with its control.

planted store -> validate -> train (real captions) -> train (shuffled-caption control) -> predict -> evaluate.
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Optional

from amr_jax.data import planted_prvr
from amr_jax.data import prvr as prvr_data
from amr_jax.metrics import prvr as prvr_metrics
from amr_jax.metrics import prvr_evaluator
from amr_jax.train import loop
from amr_jax.train.predictor import Predictor
from amr_jax.workflows import learning_check

PHASES = 6
COLLECTION = 'charades'
REPORTED = ('R1', 'R5', 'R10', 'R100', 'SumR')


class _Phases:
  """Prints 'phase k/N: what' and, when the next one starts, the seconds the previous one took."""

  def __init__(self, total: int):
    self.total, self.k, self.name, self.t = total, 0, '', time.time()
    self.seconds: dict = {}

  def start(self, text: str, cmd: str = '') -> None:
    self.end()
    self.k, self.name, self.t = self.k + 1, text.split(' (')[0], time.time()
    print(f'\n== phase {self.k}/{self.total}: {text}', flush=True)
    if cmd:
      print(f'   same as: {cmd}', flush=True)

  def end(self) -> None:
    if self.k and self.name not in self.seconds:
      self.seconds[self.name] = round(time.time() - self.t, 1)
      print(f'   phase {self.k}/{self.total} ({self.name}) done in {self.seconds[self.name]:.0f} s', flush=True)


def build_store(data_root: pathlib.Path, num_train: int, num_val: int, seed: int = 0) -> dict:
  """The first `num_train` Charades-STA train and `num_val` test captions (test = PRVR val) as a planted store.

  Returns {'train', 'val'}: the caption files it wrote ({data_root}/charades/TextData/charades{split}.caption.txt).
  """
  shipped = planted_prvr.dataset_collections(COLLECTION, str(learning_check.ANNOTATIONS.parent))
  collections = {'train': shipped['train'].subset(range(min(num_train, len(shipped['train'])))),
                 'val': shipped['val'].subset(range(min(num_val, len(shipped['val']))))}
  planted_prvr.write_planted_prvr(collections, data_root, COLLECTION, seed=seed, dims='tiny')
  return {s: str(prvr_data.caption_file_path(data_root, COLLECTION, s)) for s in collections}


def run(workdir, *, num_train: int = 3000, num_val: int = 1000, steps: int = 600, batch: int = 32,
        num_devices: int = 1, seed: int = 0, overrides: Optional[dict] = None) -> dict:
  """The whole chain in `workdir`; returns {'real', 'control', 'chance', 'oracle': R@K/SumR dicts,
  'evaluated_file': the metrics of the predicted score file, 'seconds': per phase}.

  Both arms train configs/amdnet.py:tiny the same way (`steps` steps of `batch` videos with all their captions);
  the control's captions train with other captions' text features (data.shuffle_captions), so it must stay near
  chance. 'oracle' is the planted generator's own caption-and-moment reader (a ceiling, not a model).
  """
  phases = _Phases(PHASES)
  out = pathlib.Path(workdir)
  data_root = out / 'data'
  t_start = time.time()

  phases.start(f'planted Charades-STA PRVR store ({num_train} train + {num_val} val captions, tiny dims)',
               f'python -m amr_jax.data.planted_prvr --dataset=charades --out={data_root} (all captions)')
  files = build_store(data_root, num_train, num_val, seed)
  train = prvr_data.read_caption_file(files['train'], name=COLLECTION, split='train')
  val = prvr_data.read_caption_file(files['val'], name=COLLECTION, split='val')
  print(f'   train {len(train)} captions / {train.num_videos} videos, val {len(val)} / {val.num_videos}')

  phases.start('pre-flight validation (every caption file row, video and text feature)')
  store = prvr_data.PrvrStore.open(data_root, COLLECTION)
  problems = prvr_data.validate(train, store) + prvr_data.validate(val, store)
  print(f'   {len(problems)} problems in {len(train) + len(val)} captions, {train.num_videos + val.num_videos} videos')
  if problems:
    raise ValueError('\n'.join(str(p) for p in problems))

  common = {'data.collection': COLLECTION, 'train.num_steps': steps, 'train.batch_size': batch,
            'train.num_devices': num_devices, 'train.checkpoint_every': steps, 'train.eval_every': 0,
            **(overrides or {})}

  def command(workdir_arm, extra: dict) -> str:
    flags = ' '.join(f'--config.{k}={v}' for k, v in {**common, **extra}.items())
    return (f'launch/train.py --config=configs/amdnet.py:tiny --workdir={workdir_arm} '
            f'--config.data.feature_dir={data_root} --config.data.train_annotations={files["train"]} '
            f'--config.data.val_annotations={files["val"]} {flags}')

  results = {}
  for arm, shuffle in (('real', False), ('control', True)):
    extra = {'data.shuffle_captions': shuffle} if shuffle else {}
    what = 'train, shuffled-caption control' if shuffle else 'train on the real captions'
    phases.start(f'{what} ({steps} steps of {batch} videos with all their captions)',
                 command(out / arm, extra))
    config = learning_check.tiny_config('amdnet', data_root, files['train'], files['val'], **common, **extra)
    result = loop.train_and_evaluate(config, str(out / arm))
    results[arm] = {k: result[k] for k in REPORTED}
    print(f'   val SumR {result["SumR"]:.2f} (R1 {result["R1"]:.2f})'
          + (' (reused: this run had already finished)' if result.get('already_finished') else ''))

  submission = out / 'real_val_scores.npz'
  phases.start('predict the val split with the real run (every video and caption encoded once)',
               f'launch/predict.py --workdir={out / "real"} --annotations={files["val"]} --features={data_root} '
               f'--out={submission}')
  predictor = Predictor(out / 'real', num_devices=num_devices)
  predictor.write(predictor.predict_files(files['val'], str(data_root)), str(submission))
  print(f'   wrote {submission}')

  phases.start('evaluate the score file (the prvr evaluator)',
               f'launch/evaluate.py --task=prvr --submission={submission} --annotations={files["val"]} '
               f'--out={out / "real_val_metrics.json"}')
  evaluated = prvr_evaluator.PrvrEvaluator().evaluate_files(str(submission), files['val'])
  (out / 'real_val_metrics.json').write_text(json.dumps(evaluated, indent=4))
  print(f'   score file SumR {evaluated["SumR"]:.2f} (the trainer\'s last evaluation: {results["real"]["SumR"]:.2f})')
  phases.end()

  model = planted_prvr.PlantedPrvrModel.from_store(data_root / COLLECTION)
  oracle = prvr_metrics.retrieval_metrics(planted_prvr.oracle_scores(model, store, val), val.caption_video)
  summary = {'real': results['real'], 'control': results['control'],
             'chance': prvr_metrics.chance_metrics(val.num_videos),
             'oracle': {k: oracle[k] for k in REPORTED}, 'evaluated_file': evaluated,
             'num_val_captions': len(val), 'num_val_videos': val.num_videos, 'seconds': phases.seconds,
             'total_seconds': round(time.time() - t_start, 1)}
  (out / 'amdnet_chain.json').write_text(json.dumps(summary, indent=2))
  print('\n' + table(summary), flush=True)
  return summary


def table(summary: dict) -> str:
  """Markdown rows: real vs control vs chance (and the generator's oracle ceiling) on the val split."""
  rows = [f'val: {summary["num_val_captions"]} captions x {summary["num_val_videos"]} videos',
          '| arm | ' + ' | '.join(REPORTED) + ' |', '|---|' + '---|' * len(REPORTED)]
  for arm, label in (('real', 'real captions'), ('control', 'shuffled-caption control'), ('chance', 'chance'),
                     ('oracle', 'planted oracle (ceiling)')):
    rows.append(f'| {label} | ' + ' | '.join(f'{summary[arm][k]:.2f}' for k in REPORTED) + ' |')
  return '\n'.join(rows)
