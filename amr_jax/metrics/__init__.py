"""Official metrics of every task (QVHighlights, QV-M², Charades-STA, PRVR R@K, weak-MR R@n,IoU=m) in numpy.

`registry.get(type_name)` gives an evaluator by type name (what `config.evals` and `launch/evaluate.py` use)."""
