"""Charades-STA metrics: the golden fixture (standard block + moment_detr block with a null "long" bucket).

Also the standard-block rules on hand-made cases: list-order top-k, short lists, zero-length and empty lists.
"""
import json
import pathlib

from amr_jax.metrics import api
from conftest import flat_items

ROOT = pathlib.Path(__file__).resolve().parents[1]
EVAL = ROOT / 'tests' / 'fixtures' / 'eval'
CHARADES_TEST = ROOT / 'data' / 'annotations' / 'charades-sta' / 'charades_test_release.jsonl'



def test_fixture_a_every_number_key_and_order_and_bytes():
  result = api.evaluate_files('charades', EVAL / 'charades_test_preds_A.jsonl', CHARADES_TEST)
  text = (EVAL / 'charades_test_preds_A_metrics.json').read_text()
  assert flat_items(result) == flat_items(json.loads(text))
  assert json.dumps(result, indent=4) == text
  assert result['moment_detr']['long'] is None and result['moment_detr']['brief']['MR-long-mAP'] is None


def test_standard_block_rules():
  gt = [{'qid': q, 'duration': 30.0, 'relevant_windows': [[10.0, 20.0]]} for q in range(4)]
  sub = [
      # first window misses, the 3rd (list order, despite its low score) is exact: R1 miss, R5 hit
      {'qid': 0, 'pred_relevant_windows': [[0.0, 5.0, 0.9], [25.0, 30.0, 0.8], [10.0, 20.0, 0.1]]},
      # IoU 0.5 exactly: [10, 15] vs [10, 20]
      {'qid': 1, 'pred_relevant_windows': [[10.0, 15.0, 0.5]]},
      # zero-length window inside the GT scores IoU 0
      {'qid': 2, 'pred_relevant_windows': [[12.0, 12.0, 1.0]]},
      # empty list: a miss with IoU 0 (the official moment_detr R1 would crash)
      {'qid': 3, 'pred_relevant_windows': []},
  ]
  standard = api.evaluate('charades', sub, gt)['standard']
  assert standard == {'R1@0.3': 25.0, 'R1@0.5': 25.0, 'R1@0.7': 0.0, 'R5@0.3': 50.0, 'R5@0.5': 50.0,
                      'R5@0.7': 25.0, 'mIoU': 12.5}
