"""The AMR chain on the embedded default (planted features from real QVHighlights annotations), end to end.

planted store -> validate -> Boost mining -> stage 1 (Splice+Boost) -> stage 2 -> predict (+plots) -> evaluate.
"""
import json
import pathlib
import time

from amr_jax.data import annotations, features, planted, validate
from amr_jax.metrics import api as eval_api
from amr_jax.metrics import plots
from amr_jax.train import loop
from amr_jax.train.predictor import Predictor
from amr_jax.workflows import boost_mining, learning_check
from configs import amr_mine, amr_stage1, amr_stage2

PHASES = 7
_STATE = {'t': time.time(), 'k': 0, 'name': ''}


def banner(text: str, cmd: str = '') -> None:
  """Starts phase k/N: ends the previous one with its seconds, then names this one and its complete command."""
  now = time.time()
  if _STATE['k']:
    print(f'   phase {_STATE["k"]}/{PHASES} ({_STATE["name"]}) done in {now - _STATE["t"]:.0f} s', flush=True)
  _STATE.update(t=now, k=_STATE['k'] + 1, name=text.split(':')[0])
  if _STATE['k'] > PHASES:
    return
  print(f'\n== phase {_STATE["k"]}/{PHASES}: {text}', flush=True)
  if cmd:
    print(f'   same as: {cmd}', flush=True)


def reused(result: dict) -> str:
  return ' (reused: this run had already finished; delete the folder to redo it)' if result.get(
      'already_finished') else ''



def amr_chain(workdir: str, *, num_train: int = 1000, num_val: int = 200, steps1: int = 400, steps2: int = 200,
              batch: int = 32, mine_steps: int = 150, num_plots: int = 6) -> dict:
  """planted store -> validate -> Boost mining -> stage 1 -> stage 2 -> predict (+plots) -> evaluate."""
  t_start = time.time()
  _STATE.update(t=t_start, k=0, name='')
  out = pathlib.Path(workdir)
  if (out / 'stage2' / 'final_params.sha256').exists():
    print(f'{out} holds a finished demo: every phase that finished is reused (delete {out} to redo it all)')
  data_dir = out / 'data'
  data_dir.mkdir(parents=True, exist_ok=True)
  qvh = learning_check.ANNOTATIONS  # the shipped QVHighlights annotations
  train = annotations.load_annotations(qvh / 'highlight_train_release.jsonl')[:num_train]
  val = annotations.load_annotations(qvh / 'highlight_val_release.jsonl')[:num_val]
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
                                      **{'train.batch_size': batch, **overrides})

  def same_as(script: str, config: str, workdir, overrides: dict) -> str:
    """The complete command line of one phase (runs as printed)."""
    flags = ' '.join(f'--config.{k}={v}' for k, v in overrides.items())
    return (f'launch/{script} --config=configs/{config}.py:tiny --workdir={workdir} '
            f'--config.data.feature_dir={store_dir} --config.data.train_annotations={train_path} '
            f'--config.data.val_annotations={val_path} --config.train.batch_size={batch} {flags}').strip()

  mined_path = data_dir / 'train_with_wrong_spans.jsonl'
  mine_over = {'train.num_steps': mine_steps, 'data.val_annotations': ''}
  banner('Boost: 2-fold wrong-span mining',
         same_as('mine_wrong_spans.py', 'amr_mine', out / 'mine', mine_over).replace(
             f'--config.data.val_annotations={val_path} ', '') + f' --out={mined_path}')
  mine_cfg = tiny(amr_mine, **mine_over)
  records, stats = boost_mining.mine_wrong_spans(mine_cfg, out / 'mine')
  annotations.write_jsonl(records, mined_path)
  print('   ' + json.dumps(stats))

  s1_over = {'data.train_annotations': str(mined_path), 'train.num_steps': steps1}
  banner('stage 1: cold start on Splice+Boost augmented data',
         same_as('train.py', 'amr_stage1', out / 'stage1', s1_over).replace(
             f'--config.data.train_annotations={train_path} ', ''))
  s1 = loop.train_and_evaluate(tiny(amr_stage1, **s1_over), str(out / 'stage1'))
  print('   stage 1' + reused(s1))
  s2_over = {'data.train_annotations': str(mined_path), 'train.num_steps': steps2,
             'init.stage1_workdir': str(out / 'stage1')}
  banner('stage 2: distillation with Original/Active queries against the frozen stage-1 model',
         same_as('train.py', 'amr_stage2', out / 'stage2', s2_over).replace(
             f'--config.data.train_annotations={train_path} ', ''))
  s2 = loop.train_and_evaluate(tiny(amr_stage2, **s2_over), str(out / 'stage2'))
  print('   stage 2' + reused(s2))

  sub_path = out / 'val_submission.jsonl'
  banner('predict val with the best stage-2 checkpoint',
         f'launch/predict.py --workdir={out}/stage2 --annotations={val_path} --features={store_dir} '
         f'--out={sub_path} --plots={out}/plots')
  predictor = Predictor(out / 'stage2')
  rows = predictor.predict_files(str(val_path), str(store_dir))
  sub_path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  n_plots = plots.plot_submission(str(out / 'plots'), rows, {r.qid: r.to_json() for r in val},
                                  max_plots=num_plots)

  banner('evaluate', f'launch/evaluate.py --task=qvh --submission={sub_path} --annotations={val_path} '
         f'--out={out}/val_metrics.json')
  metrics = eval_api.evaluate('qvh', rows, [r.to_json() for r in val])
  (out / 'val_metrics.json').write_text(json.dumps(metrics, indent=4))

  banner('done')
  blind = planted.query_blind_r1(val, train + val)
  print('\n== results (val, planted features)')
  keys = ['MR-full-R1@0.5', 'MR-full-R1@0.7', 'MR-full-mAP', 'HL-min-VeryGood-mAP', 'HL-min-VeryGood-Hit1']
  print(f'{"metric":<24}{"stage 1":>10}{"stage 2":>10}{"final":>10}{"query-blind":>13}')
  for k in keys:
    ceiling = f'{blind["uniform"]:.1f}' if k == 'MR-full-R1@0.5' else '-'
    print(f'{k:<24}{s1.get(k, float("nan")):>10}{s2.get(k, float("nan")):>10}{metrics["brief"][k]:>10}'
          f'{ceiling:>13}')
  print('query-blind = R1@0.5 of a perfect planted-span finder that ignores the query (picks one of the video\'s '
        'planted spans); a shuffled-query control trained like this stays at or below it (docs/PLANTED.md)')
  print(f'\nplots ({n_plots}): {out}/plots   logs: {out}/stage*/metrics.jsonl, {out}/stage*/tb   '
        f'checkpoints: {out}/stage*/checkpoints, {out}/stage*/best')
  print(f'total time {time.time() - t_start:.0f} s')
  return {'stage1': s1, 'stage2': s2, 'final': metrics['brief']}
