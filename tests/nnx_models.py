"""Flax NNX versions of the MLP, the 1-D CNN and ResNet-20 of :mod:`experiments.vision.models`
(the same layers, He-normal init), written as Flax's NNX examples write modules."""

import itertools
from typing import Sequence

import jax.numpy as jnp
from flax import nnx

he_normal = nnx.initializers.variance_scaling(2.0, 'fan_in', 'normal')


class MLP(nnx.Module):
  """Fully connected ReLU network: ``in_features`` -> ``features`` (hidden..., output)."""

  def __init__(self, in_features: int, features: Sequence[int], *, rngs: nnx.Rngs):
    widths = (in_features,) + tuple(features)
    self.layers = nnx.List([nnx.Linear(a, b, kernel_init=he_normal, rngs=rngs)
                            for a, b in itertools.pairwise(widths)])

  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for layer in self.layers[:-1]:
      x = nnx.relu(layer(x))
    return self.layers[-1](x)


class CNN1D(nnx.Module):
  """Stride-2 1-D convolutions (kernel 5, then 3) with ReLU, then a linear classifier."""

  def __init__(self, length: int = 40, channels: int = 1, widths: Sequence[int] = (32, 64, 128),
               num_classes: int = 10, *, rngs: nnx.Rngs):
    convs, width_in = [], channels
    for i, width in enumerate(widths):
      convs.append(nnx.Conv(width_in, width, (5 if i == 0 else 3,), strides=(2,),
                            kernel_init=he_normal, rngs=rngs))
      width_in, length = width, -(-length // 2)
    self.convs = nnx.List(convs)
    self.head = nnx.Linear(width_in * length, num_classes, kernel_init=he_normal, rngs=rngs)

  def __call__(self, x):
    for conv in self.convs:
      x = nnx.relu(conv(x))
    return self.head(x.reshape((x.shape[0], -1)))


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with batch norm and an identity (or 1x1) shortcut."""

  def __init__(self, in_features: int, features: int, strides: int = 1, *, rngs: nnx.Rngs):
    conv = lambda a, b, k, s: nnx.Conv(a, b, k, strides=s, use_bias=False,
                                       kernel_init=he_normal, rngs=rngs)
    norm = lambda f: nnx.BatchNorm(f, momentum=0.9, rngs=rngs)
    self.conv1, self.norm1 = conv(in_features, features, (3, 3), strides), norm(features)
    self.conv2, self.norm2 = conv(features, features, (3, 3), 1), norm(features)
    projects = strides != 1 or in_features != features
    self.shortcut = nnx.data(nnx.Sequential(conv(in_features, features, (1, 1), strides),
                                            norm(features)) if projects else None)

  def __call__(self, x):
    y = nnx.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    return nnx.relu((x if self.shortcut is None else self.shortcut(x)) + y)


class CifarResNet(nnx.Module):
  """ResNet-20 (He et al., 2016) for 32x32x3 inputs: 3 stages of 3 basic blocks."""

  def __init__(self, blocks_per_stage: int = 3, widths: Sequence[int] = (16, 32, 64),
               num_classes: int = 10, *, rngs: nnx.Rngs):
    self.stem = nnx.Conv(3, widths[0], (3, 3), use_bias=False, kernel_init=he_normal,
                         rngs=rngs)
    self.stem_norm = nnx.BatchNorm(widths[0], momentum=0.9, rngs=rngs)
    blocks, width_in = [], widths[0]
    for stage, width in enumerate(widths):
      for block in range(blocks_per_stage):
        blocks.append(BasicBlock(width_in, width, 2 if stage > 0 and block == 0 else 1,
                                 rngs=rngs))
        width_in = width
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(width_in, num_classes, kernel_init=he_normal, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem_norm(self.stem(x)))
    for block in self.blocks:
      x = block(x)
    return self.head(jnp.mean(x, axis=(1, 2)))
