"""Dense and Conv layers computed with a compressed weight: the products the adapters call.

``dense``: y = act(x W + b) as (W^T x^T)^T.

``conv``: a 1-D or 2-D convolution is taken directly on the padded input, split into its
stride phases (Park et al., ICLR 2017): no patch matrix. Measured on ResNet-20's and
the 1-D CNN's layers (BENCHMARKS.md), it beats im2col except where an image has few
output positions, so ``conv`` takes it from ``MIN_DIRECT_POSITIONS`` up (where the
compiled products are absent, the direct convolution is one product over columns read
from the phases, :func:`pcs.sparse._compiled.phase_columns`). Elsewhere (3-D, small
outputs) ``conv`` is im2col with the
output positions as the columns: the input is moved to (C, N, *spatial), padded, and
for every window offset the strided slice is taken, which stacks into x^T of shape
(prod(window) * C, N * prod(out)), rows in the kernel's own (window, channels) order;
one sparse product gives y^T (features, N * prod(out)). (XLA's
``conv_general_dilated_patches`` computes patches as a convolution with a one-hot
filter, which costs more than the dense convolution.)

Activations: the compiled products fuse the bias and, with ``activation='relu'``, the ReLU.
The adapters fuse the bias; a Flax model applies its activation outside the layer, so there
XLA applies it to the product's output (one elementwise pass over it; BENCHMARKS.md
measures the difference).
"""

import itertools
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from pcs.sparse import _compiled as compiled

Padding = Union[str, int, Sequence[Union[int, Tuple[int, int]]]]
# Fewer output positions per image than this and im2col wins (BENCHMARKS.md: the 1-D
# CNN's last layer, 5 positions): one image's plane is too little work for a vector tile,
# where im2col makes one product over the whole batch's positions.
MIN_DIRECT_POSITIONS = 8


def _check_input(x: jax.Array, fan_in: int, what: str) -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'{what}: the input must be a floating-point array (bfloat16, float16 '
                    f'or float32; the compiled products compute in float32); got {x.dtype}.')
  if x.ndim < 1 or x.shape[-1] != fan_in:
    raise ValueError(f'{what}: the input must end in {fan_in} features; got shape {x.shape}.')


def _float32(bias: Optional[jax.Array]) -> Optional[jax.Array]:
  return None if bias is None else bias.astype(jnp.float32)


def dense(x: jax.Array, weight, bias: Optional[jax.Array] = None,
          activation: Optional[str] = None, name: str = 'dense') -> jax.Array:
  """y = act(x W + b) for a compressed (fan_in, features) ``weight``; x: (..., fan_in).

  A bfloat16 or float16 ``x`` (as in a mixed-precision model) is computed in float32 and
  the result returned in ``x``'s dtype, as the dense layer returns it. ``name``: the layer
  the errors name (a model's adapter gives its path).
  """
  if len(weight.kernel_shape) != 2:
    raise ValueError(f'{name}: the kernel must be 2-D (fan_in, features); got '
                     f'{weight.kernel_shape}.')
  _check_input(x, weight.fan_in, name)
  x2 = x.reshape(-1, weight.fan_in).astype(jnp.float32)
  y = compiled.matmul(x2, weight, _float32(bias), activation)
  return y.reshape(x.shape[:-1] + (weight.features,)).astype(x.dtype)


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


def conv_unsupported(module) -> Optional[str]:
  """Why :func:`conv` cannot compute a Flax convolution (linen ``nn.Conv`` or
  ``nnx.Conv``): groups, dilations, a mask, or a padding other than SAME, VALID or explicit
  pairs; None when it can."""
  if module.feature_group_count != 1 or getattr(module, 'mask', None) is not None:
    return 'sparse convolutions take feature_group_count=1 and no mask'
  spatial = 1 if isinstance(module.kernel_size, int) else len(module.kernel_size)
  for attr in ('input_dilation', 'kernel_dilation'):
    value = getattr(module, attr)
    if value not in (None, 1) and tuple(value) != (1,) * spatial:
      return f'sparse convolutions take no {attr}'
  if isinstance(module.padding, str) and module.padding.upper() not in ('SAME', 'VALID'):
    return f'sparse convolutions take SAME, VALID or explicit padding, not {module.padding!r}'
  return None


def conv_options(module, name: str) -> dict:
  """``{'strides', 'padding'}`` of a Flax convolution (linen ``nn.Conv`` or ``nnx.Conv``),
  checked to be one :func:`conv` computes.

  Raises:
    ValueError: naming the layer ``name`` and :func:`conv_unsupported`'s reason.
  """
  why = conv_unsupported(module)
  if why is not None:
    raise ValueError(f'{name}: {why}.')
  return {'strides': module.strides or 1, 'padding': module.padding}


def _padded(x, pads, window, strides, channels_axis):
  """x (N, *spatial, C) with its channels moved to ``channels_axis`` and padded."""
  x_t = jnp.pad(jnp.moveaxis(x, -1, channels_axis), [(0, 0), (0, 0)] + pads)
  out = tuple((size - w) // s + 1 for size, w, s in zip(x_t.shape[2:], window, strides))
  if min(out) <= 0:
    raise ValueError(f'conv: the window {window} does not fit the padded input '
                     f'{x_t.shape[2:]}.')
  return x_t, out


def _direct(x, weight, bias, window, strides, pads, activation):
  """The direct product for a 1-D or 2-D convolution.

  The padded input (N, C, Hp, Wp) goes to the kernel split into the stride phases the
  window reads, z[n, (a, b, c), i, j] = x[n, c, s_h i + a, s_w j + b] for a < min(s_h,
  kh), b < min(s_w, kw) (zero-padded up to whole strides), where the strided
  convolution reads as a stride-1 one.
  """
  one_d = len(window) == 1
  if one_d:  # as 2-D with a window of height 1
    x, window, strides, pads = x[:, None], (1,) + window, (1,) + strides, [(0, 0)] + pads
  x_p, out = _padded(x, pads, window, strides, 1)  # (N, C, Hp, Wp)
  (n, c, hp, wp), (sh, sw) = x_p.shape, strides
  hq, wq = -(-hp // sh), -(-wp // sw)
  z = jnp.pad(x_p, [(0, 0), (0, 0), (0, hq * sh - hp), (0, wq * sw - wp)])
  z = z.reshape(n, c, hq, sh, wq, sw)[:, :, :, :min(sh, window[0]), :, :min(sw, window[1])]
  z = z.transpose(0, 3, 5, 1, 2, 4).reshape(n, -1, hq, wq)
  y = compiled.conv_direct(z, weight, bias, window, strides, out, activation)
  y = jnp.moveaxis(y, 1, -1)  # (N, Ho, Wo, F)
  return y[:, 0] if one_d else y


def _im2col(x, weight, bias, window, strides, pads, activation):
  x_t, out = _padded(x, pads, window, strides, 0)  # (C, N, *spatial)
  slices = []
  for offset in itertools.product(*(range(w) for w in window)):
    index = tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, strides, out))
    slices.append(x_t[(slice(None), slice(None)) + index])
  columns = x.shape[0] * int(np.prod(out))
  patches_t = jnp.stack(slices).reshape(-1, columns)  # (window..., C) x (N, *out)
  y_t = compiled.matmul_t(patches_t, weight, bias, activation)
  return jnp.moveaxis(y_t.reshape((weight.features, x.shape[0]) + out), 0, -1)


def conv(x: jax.Array, weight, bias: Optional[jax.Array] = None, *,
         strides: Union[int, Sequence[int]] = 1, padding: Padding = 'SAME',
         activation: Optional[str] = None, name: str = 'conv') -> jax.Array:
  """A channels-last convolution y = act(conv(x, W) + b) with the compressed ``weight``
  of shape ``(*window, in, features)``; x: ``(*batch, *spatial, in)``, any number of
  batch axes (none included), as Flax's ``Conv`` takes it.

  1-D and 2-D with at least ``MIN_DIRECT_POSITIONS`` output positions per image: the
  direct sparse convolution; else im2col, x^T = the stacked strided
  slices of the padded input, y^T = act(W^T x^T + b). Computed in float32; returned in
  ``x``'s dtype (bfloat16 and float16 inputs as the dense layer takes them). ``name``:
  the layer the errors name.
  """
  window = tuple(weight.kernel_shape[:-2])
  channels = weight.kernel_shape[-2]
  spatial = len(window)
  _check_input(x, channels, name)
  dtype, x, bias = x.dtype, x.astype(jnp.float32), _float32(bias)
  if x.ndim < spatial + 1:
    raise ValueError(f'{name}: a {spatial}-D kernel needs input (*batch, *{spatial} spatial, '
                     f'C); got shape {x.shape}.')
  batch = x.shape[:x.ndim - spatial - 1]
  x = x.reshape((-1,) + x.shape[x.ndim - spatial - 1:])
  strides = (strides,) * spatial if isinstance(strides, int) else tuple(strides)
  pads = [tuple(p) for p in conv_pads(padding, x.shape[1:-1], window, strides)]
  out = [(size + lo + hi - w) // s + 1
         for size, (lo, hi), w, s in zip(x.shape[1:-1], pads, window, strides)]
  direct = spatial <= 2 and np.prod(out) >= MIN_DIRECT_POSITIONS
  y = (_direct if direct else _im2col)(x, weight, bias, window, strides, pads, activation)
  return y.reshape(batch + y.shape[1:]).astype(dtype)
