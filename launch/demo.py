"""The whole AMR chain on the embedded default (planted features from real QVHighlights annotations).

planted store -> validate -> Boost mining -> stage 1 (Splice+Boost) -> stage 2 -> predict (+plots) -> evaluate.
"""
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from launch import _cli  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', 'demo_out', 'Where everything goes.')
_NUM_TRAIN = flags.DEFINE_integer('num_train', 1000, 'QVHighlights train queries used.')
_NUM_VAL = flags.DEFINE_integer('num_val', 200, 'QVHighlights val queries used.')
_STEPS1 = flags.DEFINE_integer('steps1', 400, 'Stage-1 steps.')
_STEPS2 = flags.DEFINE_integer('steps2', 200, 'Stage-2 steps.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Global batch of every training run (the tiny configs learn at 32).')
_MINE_STEPS = flags.DEFINE_integer('mine_steps', 150, 'Steps of each Boost fold model.')
_PLOTS = flags.DEFINE_integer('plots', 6, 'Per-query plots written.')



_LAST_BANNER = [time.time()]


def banner(text: str, cmd: str = '') -> None:
  """Starts a phase: prints how long the previous one took, then the phase and its equivalent command."""
  now = time.time()
  print(f'   ({now - _LAST_BANNER[0]:.0f} s)', flush=True)
  _LAST_BANNER[0] = now
  print(f'\n== {text}', flush=True)
  if cmd:
    print(f'   (same as: {cmd})', flush=True)


def main(argv):
  del argv
  from amr_jax.data import annotations, features, planted, validate  # pylint: disable=import-outside-toplevel
  from amr_jax import mining  # pylint: disable=import-outside-toplevel
  from amr_jax.eval import api as eval_api, plots  # pylint: disable=import-outside-toplevel
  from amr_jax.predictor import Predictor  # pylint: disable=import-outside-toplevel
  from amr_jax.train import learning_check, loop  # pylint: disable=import-outside-toplevel
  from configs import amr_mine, amr_stage1, amr_stage2  # pylint: disable=import-outside-toplevel

  t_start = time.time()
  out = pathlib.Path(_WORKDIR.value)
  data_dir = out / 'data'
  data_dir.mkdir(parents=True, exist_ok=True)
  qvh = learning_check.ANNOTATIONS  # the shipped QVHighlights annotations
  train = annotations.load_annotations(qvh / 'highlight_train_release.jsonl')[:_NUM_TRAIN.value]
  val = annotations.load_annotations(qvh / 'highlight_val_release.jsonl')[:_NUM_VAL.value]
  train_path, val_path = data_dir / 'train.jsonl', data_dir / 'val.jsonl'
  annotations.write_jsonl(train, train_path)
  annotations.write_jsonl(val, val_path)
  store_dir = out / 'planted'

  banner(f'planted feature store ({len(train)} train + {len(val)} val queries, tiny dims)',
         f'launch/make_planted_features.py --annotations={train_path} --annotations={val_path} '
         f'--out={store_dir} --dims=tiny')
  summary = planted.write_planted_store(train + val, str(store_dir), seed=0, dims='tiny')
  print(f'   {summary.num_videos} videos, {summary.num_queries} queries')

  banner('pre-flight validation', f'launch/validate_data.py --annotations={train_path} --features={store_dir}')
  store = features.FeatureStore(str(store_dir))
  problems = validate.validate(train + val, store)
  print(f'   {len(problems)} problems')
  if problems:
    raise ValueError('\n'.join(str(p) for p in problems))

  def tiny(module, **overrides):
    """configs/<module>.py:tiny on the demo's store and annotation files, at the demo's batch size."""
    return learning_check.tiny_config(module.__name__.rsplit('.', 1)[-1], store_dir, train_path, val_path,
                                      **{'train.batch_size': _BATCH.value, **overrides})

  mined_path = data_dir / 'train_with_wrong_spans.jsonl'
  banner('Boost: 2-fold wrong-span mining', f'launch/mine_wrong_spans.py --config=configs/amr_mine.py:tiny '
         f'--workdir={out}/mine --out={mined_path}')
  mine_cfg = tiny(amr_mine, **{'train.num_steps': _MINE_STEPS.value, 'data.val_annotations': ''})
  records, stats = mining.mine_wrong_spans(mine_cfg, out / 'mine')
  annotations.write_jsonl(records, mined_path)
  print('   ' + json.dumps(stats))

  banner('stage 1: cold start on Splice+Boost augmented data',
         f'launch/train.py --config=configs/amr_stage1.py:tiny --workdir={out}/stage1')
  s1 = loop.train_and_evaluate(tiny(amr_stage1, **{'data.train_annotations': str(mined_path),
                                                   'train.num_steps': _STEPS1.value}), str(out / 'stage1'))
  banner('stage 2: distillation with Original/Active queries against the frozen stage-1 model',
         f'launch/train.py --config=configs/amr_stage2.py:tiny --workdir={out}/stage2 '
         f'--config.init.stage1_workdir={out}/stage1')
  s2 = loop.train_and_evaluate(tiny(amr_stage2, **{'data.train_annotations': str(mined_path),
                                                   'train.num_steps': _STEPS2.value,
                                                   'init.stage1_workdir': str(out / 'stage1')}),
                               str(out / 'stage2'))

  sub_path = out / 'val_submission.jsonl'
  banner('predict val with the best stage-2 checkpoint',
         f'launch/predict.py --workdir={out}/stage2 --annotations={val_path} --features={store_dir} '
         f'--out={sub_path} --plots={out}/plots')
  rows = Predictor(out / 'stage2').predict(val, store)
  sub_path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  n_plots = plots.plot_submission(str(out / 'plots'), rows, {r.qid: r.to_json() for r in val},
                                  max_plots=_PLOTS.value)

  banner('evaluate', f'launch/evaluate.py --task=qvh --submission={sub_path} --annotations={val_path} '
         f'--out={out}/val_metrics.json')
  metrics = eval_api.evaluate('qvh', rows, [r.to_json() for r in val])
  (out / 'val_metrics.json').write_text(json.dumps(metrics, indent=4))

  banner('results (val, planted features)')
  keys = ['MR-full-R1@0.5', 'MR-full-R1@0.7', 'MR-full-mAP', 'HL-min-VeryGood-mAP', 'HL-min-VeryGood-Hit1']
  print(f'{"metric":<24}{"stage 1":>10}{"stage 2":>10}{"final":>10}')
  for k in keys:
    print(f'{k:<24}{s1.get(k, float("nan")):>10}{s2.get(k, float("nan")):>10}{metrics["brief"][k]:>10}')
  print(f'\nplots ({n_plots}): {out}/plots   logs: {out}/stage*/metrics.jsonl, {out}/stage*/tb   '
        f'checkpoints: {out}/stage*/checkpoints, {out}/stage*/best')
  print(f'total time {time.time() - t_start:.0f} s')


if __name__ == '__main__':
  _cli.run(main, jax_cache=True)
