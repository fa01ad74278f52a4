"""CIFAR-10 / ResNet-20, the paper's recipe (Jacobs & Burkholz, ICLR 2025, Section 5.2).

SGD momentum 0.9, batch 256, weight decay 1e-4, 150 epochs, cosine schedule with
warmup, He-normal init, beta = 1, alpha in {1e-4, 3e-4, 1e-3}; the paper uses lr 0.2
for the m * w methods (pilot, spred) and 0.1 otherwise: pass
``--config.learning_rate=0.2`` for those. Needs ``tfds build cifar10`` once.
"""

from experiments.vision.configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model = 'resnet20'
  config.num_epochs = 150
  config.batch_size = 256
  config.eval_batch_size = 1000
  config.learning_rate = 0.1
  config.lr_schedule = 'cosine'
  config.warmup_epochs = 5
  config.weight_decay = 1e-4
  config.sparsity = 0.9
  config.eval_train = False
  config.pilot.alpha = 1e-4
  config.pilot.delta = 1.1
  config.spred.weight_decay = 1e-4
  config.str.weight_decay = 1e-4
  return config
