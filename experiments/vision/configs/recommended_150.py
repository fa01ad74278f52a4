"""PILoT's recipe for a 150-epoch budget on mnist1d: PILoT inside GMP, tuned at that length.

The quality benchmark's 150-epoch study (QUALITY.md, "the paper's training length") re-tunes
each recipe at 150 epochs on a validation split. ``pilot`` + ``gmp`` picked constant alpha
1e-4 (Jacobs & Burkholz, ICLR 2025, with delta = 1) inside GMP's cubic ramp (Zhu & Gupta,
2018), lr 0.2 and weight decay 1e-3. How it compares with GMP tuned the same way at GMP's
own 150 epochs, and with proximal L1 at that budget (``--config.method=l1``): QUALITY.md's
150-epoch tables and notes. Use this config when the model is to be PILoT's.

  python -m experiments.vision.main --workdir=runs/pilotgmp150 \
      --config=experiments/vision/configs/recommended_150.py
"""

from experiments.vision.configs import default


def get_config():
  config = default.get_config()
  config.method = 'pilot'
  config.schedule = 'gmp'
  config.num_epochs = 150
  config.sparsity = 0.99
  config.learning_rate = 0.2
  config.weight_decay = 1e-3
  config.pilot.alpha = 1e-4
  config.pilot.delta = 1.0
  config.finetune_epochs = 5
  return config
