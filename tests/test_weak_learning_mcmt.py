"""MCMT learns on the planted weak-MR store: R1@0.5 and mIoU far above a shuffled-query control (tests/weak_gap.py)."""
from weak_gap import check_gap


def test_mcmt_beats_the_shuffled_query_control(tmp_path):
  check_gap(tmp_path, 'mcmt')
