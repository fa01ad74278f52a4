"""Folding an inference batch norm into the layer before it.

A Dense or Conv layer y = x W + b followed by a batch norm in inference mode (running
statistics: mean mu, variance sigma^2, scale gamma, offset beta, per output feature o)

    z = gamma (y - mu) / sqrt(sigma^2 + eps) + beta

is one layer z = x W' + b' with, per output feature, s = gamma / sqrt(sigma^2 + eps) and

    W'[..., o] = W[..., o] s[o],     b'[o] = (b[o] - mu[o]) s[o] + beta[o].

Zeros of W stay zeros, so the folded kernel keeps the pruned pattern. The adapters find
the pairs (a batch norm whose input is the very array the layer returned), export W' and
b', and make that batch norm the identity when the model runs. The sums are taken in
float64 and rounded once to float32.
"""

import hashlib
from typing import NamedTuple, Optional, Tuple

import numpy as np

from pcs.core import _paths as paths

Path = Tuple


class NormFold(NamedTuple):
  """A batch norm to fold into a layer: its path, s = gamma / sqrt(var + eps) and
  t = beta - mu s (so z = y s + t), and the values they came from, ``(mean, var, gamma,
  beta)`` as the model holds them (None where it has none; :func:`fold_digest`)."""
  norm: Path
  scale: np.ndarray
  shift: np.ndarray
  source: Tuple = ()


def norm_fold(norm: Path, mean, var, epsilon: float, scale=None, offset=None) -> NormFold:
  """The :class:`NormFold` of the batch norm at ``norm`` from its running ``mean`` and
  ``var``, its ``epsilon`` and its ``scale`` (gamma) and ``offset`` (beta), None where the
  norm has none."""
  mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
  gamma = np.ones_like(mean) if scale is None else np.asarray(scale, np.float64)
  beta = np.zeros_like(mean) if offset is None else np.asarray(offset, np.float64)
  s = gamma / np.sqrt(var + float(epsilon))
  return NormFold(tuple(norm), s, beta - mean * s, (mean, var, scale, offset))


def fold_digest(bias, mean, var, scale, offset) -> str:
  """A digest (BLAKE2b, 128 bits) of what a fold reads besides the kernel: the layer's
  ``bias`` and the norm's running ``mean`` and ``var``, ``scale`` (gamma) and ``offset``
  (beta), each's shape and float32 values, None where the model has none. A layer's
  folded bias b' = (b - mean) s + beta changes with any of them."""
  digest = hashlib.blake2b(digest_size=16)
  for value in (bias, mean, var, scale, offset):
    if value is None:
      digest.update(b'none;')
      continue
    values = np.ascontiguousarray(value, np.float32)
    digest.update(repr(values.shape).encode())
    digest.update(values.data)
  return digest.hexdigest()


def fold(kernel: np.ndarray, bias: Optional[np.ndarray],
         norm: NormFold) -> Tuple[np.ndarray, np.ndarray]:
  """``(W', b')``: the kernel scaled per output feature (its last axis) and the folded
  bias, float32."""
  if norm.scale.shape != (kernel.shape[-1],):
    raise ValueError(f'The batch norm {paths.path_name(norm.norm)} normalizes '
                     f'{norm.scale.shape} features but the layer before it has '
                     f'{kernel.shape[-1]}; it cannot be folded.')
  b = np.zeros(kernel.shape[-1]) if bias is None else np.asarray(bias, np.float64)
  return ((np.asarray(kernel, np.float64) * norm.scale).astype(np.float32),
          (b * norm.scale + norm.shift).astype(np.float32))


def in_inference(norm, x, args, kwargs) -> bool:
  """Whether a call ``norm(*args, **kwargs)`` of a Flax batch norm (linen or NNX) on
  ``x = args[0]`` normalizes ``x``'s last axis with its running statistics and no mask:
  the case that folds."""
  use_running_average = kwargs.get('use_running_average', args[1] if len(args) > 1 else None)
  if use_running_average is None:
    use_running_average = norm.use_running_average
  axis = norm.axis if isinstance(norm.axis, int) else None
  return (bool(use_running_average) and axis is not None and axis % x.ndim == x.ndim - 1
          and kwargs.get('mask') is None)
