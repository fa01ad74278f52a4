"""Default: the mnist1d 1-D CNN sparsified to 90% with PILoT; offline, minutes on a CPU.

Every key can be overridden on the command line, e.g. ``--config.method=dense
--config.schedule=gmp --config.sparsity=0.98``. Method hyperparameters live in their own sub-dicts
(``--config.pilot.alpha=3e-4``). This config is used as written: pilot runs Algorithm 1's
controller, as the paper states it, at one shared learning rate and weight decay. Each recipe
at the values the quality benchmark picked for it on a validation split is a config of its own,
``configs/picked.py:<model>,<recipe>``, built on this one; ``make demo`` and the benchmark use
those. The recommended recipe is ``configs/recommended.py``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = 'mnist1d'
  config.data_dir = '~/tensorflow_datasets'
  config.model = 'cnn1d'
  config.method = 'pilot'        # how weights are trained: optimizers.METHODS
  config.schedule = 'one_shot'   # how masks are imposed: one_shot, gmp or imp
  config.sparsity = 0.9
  config.prune_scope = 'global'
  config.validation_fraction = 0.0  # > 0: hold out this part of train; test is not read
  config.init_checkpoint = ''    # workdir of a finished run: start from its final weights

  config.num_epochs = 30
  config.batch_size = 128
  config.eval_batch_size = 500
  config.learning_rate = 0.2
  config.lr_schedule = 'cosine'
  config.warmup_epochs = 1
  config.momentum = 0.9
  config.weight_decay = 1e-3
  config.finetune_epochs = 0
  config.finetune_learning_rate = 0.01
  config.seed = 0
  config.num_devices = 0   # 0: all devices
  config.param_sharding = 'replicated'  # or 'fsdp': params and optimizer state sharded
  config.eval_train = True
  config.on_nonfinite = 'stop'     # 'stop': halt naming the step; 'skip': drop such steps
  config.max_nonfinite_steps = 5   # with 'skip': consecutive bad steps before giving up
  # A collapsed run (experiments/common/collapse.py: loss non-finite, or jumped above 10x its best
  # and above chance's ln(classes), or accuracy at chance after the warmup): 'stop' ends it,
  # 'warn' goes on; either way results.json says `collapsed`.
  config.on_collapse = 'stop'
  config.clip_grad_norm = 0.0      # > 0: clip gradients to this global norm (optax); 0: off

  # pilot: Algorithm 1's controller; alpha grows x1.3 per improving epoch in the first
  # half while ||x||_1 >= 1000 (the initial ||x||_1 is ~3000), then decays. On the CNN
  # ||x||_1 falls below 1000 in epoch 4, so alpha only decays after that, at any length.
  # delta = 1: constant alpha, switched off after the fraction `alpha_until` of training.
  # decoupled: the decay acts outside the inner optimizer (Algorithm 1 couples it).
  # alpha_control 'target': pcs.target_alpha_controller, which pauses alpha in every epoch
  # after which pruning to `sparsity` costs at most `prune_tolerance` of train accuracy.
  config.pilot = ml_collections.ConfigDict(
      {'alpha': 1e-3, 'beta': 1.0, 'delta': 1.3, 'l1_threshold': 1000.0, 'alpha_until': 1.0,
       'decoupled': False, 'alpha_control': 'paper', 'prune_tolerance': 0.01})
  config.spred = ml_collections.ConfigDict({'weight_decay': 3e-4})
  config.str = ml_collections.ConfigDict({'weight_decay': 3e-3, 'init_threshold': -5.0})
  config.cs = ml_collections.ConfigDict(
      {'l1_strength': 1e-4, 'final_temperature': 200.0, 'mask_init': 0.5})
  config.powerprop = ml_collections.ConfigDict({'power': 2.0})
  config.l1 = ml_collections.ConfigDict({'strength': 1e-2})
  config.gmp = ml_collections.ConfigDict(
      {'begin_fraction': 0.1, 'end_fraction': 0.7, 'frequency_epochs': 1.0})
  # imp: `cycles` rounds of prune -> rewind -> retrain (num_epochs each) after the first
  # training; rewind 'weights' (WR, to the weights after `rewind_epoch` epochs) or
  # 'learning_rate' (LRR: keep the trained weights, restart the schedule); each cycle's
  # schedule warms up over `warmup_epochs` (PILoT's surviving weights step faster as they
  # grow, so a rewind to the peak rate right after a prune can diverge; QUALITY.md).
  config.imp = ml_collections.ConfigDict(
      {'cycles': 3, 'rewind': 'learning_rate', 'rewind_epoch': 1, 'warmup_epochs': 1})
  return config
