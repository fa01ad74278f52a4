"""ImageNet / ResNet-50, the paper's recipe (Jacobs & Burkholz, ICLR 2025, Section 5.2).

Batch 256, SGD momentum 0.9, weight decay 1e-4, cosine schedule with warmup, 150
epochs as in the paper's CIFAR recipe (set ``--config.num_epochs`` to match a
shorter budget). Reported top-1 at 80 / 90 / 95% sparsity: PILoT 75.62 / 74.73 /
71.30, spred 72.64 / 71.84 / 69.47, STR 75.49 / 72.40 / 64.94. Needs the manual
ImageNet download and ``tfds build imagenet2012`` once.
"""

from experiments.vision.configs import cifar10_resnet20


def get_config():
  config = cifar10_resnet20.get_config()
  config.dataset = 'imagenet2012'
  config.model = 'resnet50'
  config.eval_batch_size = 256
  config.sparsity = 0.8
  return config
