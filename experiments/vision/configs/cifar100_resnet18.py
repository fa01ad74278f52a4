"""CIFAR-100 / ResNet-18, the paper's recipe (Jacobs & Burkholz, ICLR 2025, Section 5.2).

As cifar10_resnet20 but a step schedule with warmup (x0.1 at 50% and 75% of
training). Needs ``tfds build cifar100`` once.
"""

from experiments.vision.configs import cifar10_resnet20


def get_config():
  config = cifar10_resnet20.get_config()
  config.dataset = 'cifar100'
  config.model = 'resnet18'
  config.lr_schedule = 'step'
  return config
