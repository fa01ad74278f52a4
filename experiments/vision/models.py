"""Flax models used by the experiments and benchmarks, with He-normal init (He et al., 2015).

The paper's recipe (Jacobs & Burkholz, ICLR 2025) initialises every model He-normal.
"""

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


class CNN1D(nn.Module):
  """A 1-D CNN for MNIST-1D: stride-2 convolutions, then a linear classifier.

  After Greydanus, "Scaling down deep learning", 2020 (wider, for high sparsity).
  """
  widths: Sequence[int] = (32, 64, 128)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    for i, width in enumerate(self.widths):
      x = nn.Conv(width, (5 if i == 0 else 3,), strides=(2,), kernel_init=he_normal)(x)
      x = nn.relu(x)
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, kernel_init=he_normal)(x)


def _norm(train):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with batch norm and an identity (or 1x1) shortcut."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool = True):
    y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False, kernel_init=he_normal)(x)
    y = nn.relu(_norm(train)(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False, kernel_init=he_normal)(y)
    y = _norm(train)(y)
    if x.shape != y.shape:
      x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False,
                  kernel_init=he_normal)(x)
      x = _norm(train)(x)
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
    x = nn.relu(_norm(train)(x))
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, strides)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=he_normal)(x)


class CifarResNet18(nn.Module):
  """ResNet-18 for 32x32 inputs: a 3x3 stem, 4 stages of 2 basic blocks (64..512)."""
  num_classes: int = 100

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(64, (3, 3), use_bias=False, kernel_init=he_normal)(x)
    x = nn.relu(_norm(train)(x))
    for stage, width in enumerate((64, 128, 256, 512)):
      for block in range(2):
        x = BasicBlock(width, 2 if stage > 0 and block == 0 else 1)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=he_normal)(x)


class VGG16(nn.Module):
  """VGG-16 with batch norm for 32x32 inputs (Simonyan & Zisserman, 2015)."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    for block in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
      for width in block:
        x = nn.Conv(width, (3, 3), use_bias=False, kernel_init=he_normal)(x)
        x = nn.relu(_norm(train)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, kernel_init=he_normal)(x)


class Bottleneck(nn.Module):
  """1x1 - 3x3 - 1x1 bottleneck with 4x expansion (stride on the 3x3, as in torchvision)."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool = True):
    y = nn.Conv(self.features, (1, 1), use_bias=False, kernel_init=he_normal)(x)
    y = nn.relu(_norm(train)(y))
    y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False, kernel_init=he_normal)(y)
    y = nn.relu(_norm(train)(y))
    y = nn.Conv(4 * self.features, (1, 1), use_bias=False, kernel_init=he_normal)(y)
    y = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = nn.Conv(4 * self.features, (1, 1), self.strides, use_bias=False,
                  kernel_init=he_normal)(x)
      x = _norm(train)(x)
    return nn.relu(x + y)


class ResNet50(nn.Module):
  """ResNet-50 for ImageNet (He et al., 2016): 7x7 stem, stages of 3, 4, 6, 3 bottlenecks."""
  num_classes: int = 1000

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                kernel_init=he_normal)(x)
    x = nn.relu(_norm(train)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
      for block in range(blocks):
        x = Bottleneck(width, 2 if stage > 0 and block == 0 else 1)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=he_normal)(x)


def resnet20(num_classes: int = 10) -> CifarResNet:
  return CifarResNet(blocks_per_stage=3, num_classes=num_classes)


MODELS = {
    'cnn1d': lambda num_classes: CNN1D(num_classes=num_classes),
    'mlp': lambda num_classes: MLP((256, 256, num_classes)),
    'resnet20': resnet20,
    'resnet18': lambda num_classes: CifarResNet18(num_classes=num_classes),
    'vgg16': lambda num_classes: VGG16(num_classes=num_classes),
    'resnet50': lambda num_classes: ResNet50(num_classes=num_classes),
}


def create_model(name: str, num_classes: int) -> nn.Module:
  """The model called ``name`` (one of :data:`MODELS`) with ``num_classes`` outputs."""
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; choose one of {sorted(MODELS)}.')
  return MODELS[name](num_classes)
