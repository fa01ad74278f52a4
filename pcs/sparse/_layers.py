"""Dense and Conv layers computed with a sparse kernel: the products the adapters call.

``dense``: y = act(x W + b) as (W^T x^T)^T. ``conv``: im2col with the output positions as
the columns: the input is moved to (C, N, *spatial), padded, and for every window offset
the strided slice is taken, which stacks into x^T of shape (prod(window) * C,
N * prod(out)), rows in the kernel's own (window, channels) order; one sparse product
gives y^T (features, N * prod(out)). Slicing copies the input once per window offset;
it replaces XLA's ``conv_general_dilated_patches``, which computes the patches as a
convolution with a one-hot filter and so costs more than the dense convolution itself.
"""

import itertools
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from pcs.sparse import _kernels as kernels

Padding = Union[str, int, Sequence[Union[int, Tuple[int, int]]]]


def _check_input(x: jax.Array, fan_in: int, what: str) -> None:
  if x.dtype != jnp.float32:
    raise TypeError(f'{what}: the input must be float32 (the sparse kernels compute in '
                    f'float32); got {x.dtype}.')
  if x.ndim < 1 or x.shape[-1] != fan_in:
    raise ValueError(f'{what}: the input must end in {fan_in} features; got shape {x.shape}.')


def dense(x: jax.Array, layer, bias: Optional[jax.Array] = None,
          activation: Optional[str] = None) -> jax.Array:
  """y = act(x W + b) for a sparse (fan_in, features) kernel ``layer``; x: (..., fan_in)."""
  if len(layer.kernel_shape) != 2:
    raise ValueError(f'dense: the kernel must be 2-D (fan_in, features); got '
                     f'{layer.kernel_shape}.')
  _check_input(x, layer.fan_in, 'dense')
  x2 = x.reshape(-1, layer.fan_in)
  y_t = kernels.matmul_t(x2.T, layer, bias, activation)
  return y_t.T.reshape(x.shape[:-1] + (layer.features,))


def conv_pads(padding: Padding, spatial_in, window, strides):
  """(low, high) padding per spatial dimension, as flax's Conv reads ``padding``."""
  if isinstance(padding, str):
    if padding.upper() not in ('SAME', 'VALID'):
      raise ValueError(f'conv: `padding` must be SAME, VALID, an int or (low, high) pairs; '
                       f'got {padding!r}.')
    return jax.lax.padtype_to_pads(spatial_in, window, strides, padding.upper())
  if isinstance(padding, int):
    return [(padding, padding)] * len(window)
  pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
  if len(pads) != len(window):
    raise ValueError(f'conv: `padding` needs one pair per spatial dimension; got {padding!r}.')
  return pads


def conv(x: jax.Array, layer, bias: Optional[jax.Array] = None, *,
         strides: Union[int, Sequence[int]] = 1, padding: Padding = 'SAME',
         activation: Optional[str] = None) -> jax.Array:
  """A channels-last convolution y = act(conv(x, W) + b) with the sparse kernel ``layer``
  of shape ``(*window, in, features)``; x: ``(N, *spatial, in)`` or ``(*spatial, in)``.

  im2col: x^T = the stacked strided slices of the padded input, one per window offset,
  of shape (prod(window) * in, N * prod(out)); y^T = act(W^T x^T + b).
  """
  window = tuple(layer.kernel_shape[:-2])
  channels = layer.kernel_shape[-2]
  spatial = len(window)
  _check_input(x, channels, 'conv')
  unbatched = x.ndim == spatial + 1
  if unbatched:
    x = x[None]
  if x.ndim != spatial + 2:
    raise ValueError(f'conv: a {spatial}-D kernel needs input (N, *{spatial} spatial, C); '
                     f'got shape {x.shape}.')
  strides = (strides,) * spatial if isinstance(strides, int) else tuple(strides)
  pads = conv_pads(padding, x.shape[1:-1], window, strides)
  x_t = jnp.moveaxis(x, -1, 0)  # (C, N, *spatial)
  x_t = jnp.pad(x_t, [(0, 0), (0, 0)] + [tuple(p) for p in pads])
  out = tuple((size - w) // s + 1 for size, w, s in zip(x_t.shape[2:], window, strides))
  if min(out) <= 0:
    raise ValueError(f'conv: the window {window} does not fit the padded input '
                     f'{x_t.shape[2:]}.')
  slices = []
  for offset in itertools.product(*(range(w) for w in window)):
    index = tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, strides, out))
    slices.append(x_t[(slice(None), slice(None)) + index])
  columns = x.shape[0] * int(np.prod(out))
  patches_t = jnp.stack(slices).reshape(-1, columns)  # (window..., C) x (N, *out)
  y_t = kernels.matmul_t(patches_t, layer, bias, activation)
  y = jnp.moveaxis(y_t.reshape((layer.features, x.shape[0]) + out), 0, -1)
  return y[0] if unbatched else y
