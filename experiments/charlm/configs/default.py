"""Default: a 2-block character LM on optax's source, sparsified to 90% with PILoT in Adam(W).

About 2-3 minutes on 2 CPU cores (8 epochs of 100 steps of 32 x 64 bytes). Any key can
be overridden on the command line, e.g. ``--config.method=dense --config.schedule=gmp
--config.sparsity=0.95``; method hyperparameters live in their own sub-dicts
(``--config.pilot.alpha=3e-4``), as in ``experiments/vision/configs/default.py``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = 'optax_source'
  config.data_dir = '~/tensorflow_datasets'
  config.eval_split = 'validation'  # every evaluation reads it; 'test' for final runs only

  # The model (experiments/charlm/models.py).
  config.context = 64
  config.width = 128
  config.depth = 2
  config.num_heads = 4
  config.mlp_width = 512
  config.tie_embeddings = False

  config.method = 'pilot'          # how weights are trained: experiments.common.optimizers.METHODS
  config.schedule = 'one_shot'     # how masks are imposed: one_shot, gmp or imp
  config.sparsity = 0.9
  config.prune_scope = 'layerwise'  # per kernel: every projection keeps 1 - sparsity

  config.optimizer = 'adamw'       # the inner optimizer the method wraps: 'adamw' or 'sgd'
  config.adam = ml_collections.ConfigDict({'b1': 0.9, 'b2': 0.99})
  config.momentum = 0.9            # sgd only
  config.num_epochs = 8
  config.steps_per_epoch = 100     # 0: one pass over the training text per epoch
  config.batch_size = 32
  config.eval_batch_size = 128
  config.eval_bytes = 0            # > 0: evaluate on the first this many bytes of the split
  config.learning_rate = 3e-3
  config.lr_schedule = 'cosine'
  config.warmup_epochs = 1
  config.weight_decay = 0.01
  config.clip_grad_norm = 1.0      # > 0: clip gradients to this global norm; 0: off
  config.finetune_epochs = 0
  config.finetune_learning_rate = 3e-4
  config.seed = 0
  config.on_nonfinite = 'stop'     # 'stop': halt naming the epoch; 'skip': drop such steps
  config.max_nonfinite_steps = 5
  config.on_collapse = 'stop'      # experiments/common/collapse.py; 'warn' goes on
  config.sample_bytes = 64         # bytes generated with the cache at the end (0: none)

  # Method hyperparameters (experiments/common/optimizers.py). delta = 1: constant alpha.
  config.pilot = ml_collections.ConfigDict(
      {'alpha': 1e-3, 'beta': 1.0, 'delta': 1.0, 'l1_threshold': 0.0, 'alpha_until': 1.0,
       'decoupled': False, 'alpha_control': 'paper', 'prune_tolerance': 0.01})
  config.spred = ml_collections.ConfigDict({'weight_decay': 1e-3})
  config.str = ml_collections.ConfigDict({'weight_decay': 1e-3, 'init_threshold': -5.0})
  config.cs = ml_collections.ConfigDict(
      {'l1_strength': 1e-5, 'final_temperature': 200.0, 'mask_init': 0.5})
  config.powerprop = ml_collections.ConfigDict({'power': 2.0})
  config.l1 = ml_collections.ConfigDict({'strength': 1e-2})
  config.gmp = ml_collections.ConfigDict(
      {'begin_fraction': 0.1, 'end_fraction': 0.7, 'frequency_epochs': 0.2})
  config.imp = ml_collections.ConfigDict(
      {'cycles': 3, 'rewind': 'learning_rate', 'rewind_epoch': 1, 'warmup_epochs': 1})
  return config
