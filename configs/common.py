"""Config sections every method shares: the trainer's keys (seed, train, eval, init, evals, predict) and the
moment-retrieval data section of the QVH-style methods. Method configs add their own sections on top."""
import ml_collections


def check_arg(arg: str, allowed=('', 'tiny')) -> str:
  """Refuses an unknown config argument (`configs/x.py:tyny`) with one line."""
  if arg not in allowed:
    raise ValueError(f'unknown config argument {arg!r}; expected one of: '
                     + ', '.join(repr(a) if a else "'' (none)" for a in allowed))
  return arg


def trainer_config(tiny: bool, *, method: str, evals: dict, best_metric: str, best_mode: str = 'max',
                   eval_batch_size: int = 100) -> ml_collections.ConfigDict:
  """The keys the model-neutral trainer reads (launch/train.py, amr_jax/train/loop.py)."""
  c = ml_collections.ConfigDict()
  c.method = method                 # registered method name (amr_jax/train/registry.py METHODS)
  c.seed = 42                       # every seed (init, data order, augmentation, dropout) derives from it
  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 40
  c.train.num_steps = 0             # >0 overrides epochs
  c.train.batch_size = 8 if tiny else 128
  c.train.num_devices = 0           # 0 = every device of every process; N = the first N (one process only)
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  c.train.eval_every = 0            # 0 = evaluate at the end only
  c.train.log_every = 10
  c.train.max_bad_steps = 5         # consecutive non-finite steps before the run stops
  c.train.inject_nan_at_step = -1   # test hook: poison this step's loss/gradients with NaN
  c.train.overwrite = False         # True: start over in a workdir that holds another run
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 32 if tiny else eval_batch_size
  c.eval.best_metric = best_metric  # '<eval name>/<scalar>' that picks best/ ('' = keep no best)
  c.eval.best_mode = best_mode      # 'max' | 'min'
  c.evals = ml_collections.ConfigDict(evals)   # name -> {type: evaluator type, ...options}; scored on val
  c.init = ml_collections.ConfigDict()
  c.init.stage1_workdir = ''        # stage 2 only: the run whose last checkpoint initialises student/teacher
  return c


def moment_data_config() -> ml_collections.ConfigDict:
  """QVHighlights-style records + feature store (AMR, FlashMMR)."""
  d = ml_collections.ConfigDict()
  d.train_annotations = 'data/annotations/qvhighlights/highlight_train_release.jsonl'
  d.val_annotations = 'data/annotations/qvhighlights/highlight_val_release.jsonl'
  d.feature_dir = 'demo_out/planted'
  # How features reach the batches: 'memory' preloads every feature the annotations use (fastest, RAM-bound);
  # 'stream' reads an ArrayRecord store (launch/convert_store.py) on demand through a byte-bounded LRU;
  # 'auto' = 'stream' when feature_dir is a converted store, else 'memory'. Batches are identical either way.
  d.feature_source = 'auto'
  d.source_cache_mb = 512   # 'stream': the LRU budget of decoded records
  d.verify_shards = 'all'   # converted store: 'all' (sha256 of every shard at start-up) | 'lazy' | 'size'
  d.max_v_l = 75
  d.max_q_l = 32
  d.max_windows = 10
  d.clip_len = 2.0
  d.drop_bad = False
  d.shuffle_queries = False # control run: train on other queries' text features (must stay near chance)
  d.subset = 0              # >0: only the first N training queries (demo / tests)
  d.val_subset = 0
  return d


def moment_predict_config() -> ml_collections.ConfigDict:
  """Inference options of the MR methods (launch/predict.py, Predictor)."""
  p = ml_collections.ConfigDict()
  p.sliding_window = True   # videos longer than max_v_l: overlapping windows, merged (the reference truncates)
  p.window_overlap = 25     # clips shared by consecutive windows
  p.merge_nms_iou = 0.7     # NMS IoU merging the windows' predictions
  return p
