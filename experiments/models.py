"""Flax models used by the experiments and benchmarks, with He-normal init (He et al., 2015)."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


class MLP(nn.Module):
  """Fully connected ReLU network; ``features`` lists hidden and output widths."""
  features: Sequence[int]

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.features):
      x = nn.Dense(width, kernel_init=he_normal)(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
    return x


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with batch norm and an identity (or 1x1) shortcut."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False, kernel_init=he_normal)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False, kernel_init=he_normal)(y)
    y = norm()(y)
    if x.shape != y.shape:
      x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False,
                  kernel_init=he_normal)(x)
      x = norm()(x)
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """The CIFAR ResNet of He et al. (2016): 3 stages of ``blocks_per_stage`` blocks.

  ``blocks_per_stage=3`` with widths (16, 32, 64) is ResNet-20 (0.27M parameters).
  """
  blocks_per_stage: int = 3
  widths: Sequence[int] = (16, 32, 64)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False, kernel_init=he_normal)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, strides)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=he_normal)(x)


def resnet20(num_classes: int = 10) -> CifarResNet:
  return CifarResNet(blocks_per_stage=3, num_classes=num_classes)
