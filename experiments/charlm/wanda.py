"""Wanda: one-shot pruning by weight magnitude times input-activation norm (Sun, Liu,
Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language Models",
ICLR 2024), for any kernel whose input axes ``pcs.kernel_layouts`` knows.

For a layer y = W x with inputs X (n samples), weight W_ij (output i, input j) scores

    S_ij = |W_ij| * ||X_j||_2,    ||X_j||_2 = sqrt(sum_n X_nj^2),

and each output i keeps its (1 - s) d_in highest-scoring inputs: the comparison group
is one output's fan-in (the paper's "per output"), so every output keeps the same
number of weights; ties go to the lower input index. No retraining, no weight update.
With equal norms it is magnitude pruning per output row.

For a LinearGeneral kernel (attention: (in, heads, head_dim) or (heads, head_dim, out))
the input axes (``KernelLayout.in_axes``) are flattened to j and the output axes to i.
"""

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import pcs

Path = Tuple


def input_norms(inputs: Dict[Path, jax.Array], layouts: Dict[Path, pcs.KernelLayout]
                ) -> Dict[Path, jax.Array]:
  """``{kernel path: ||X_j||_2}``: each kernel's inputs reduced over every axis but the
  trailing ones that meet the kernel's input axes (shape: those axes)."""
  norms = {}
  for path, x in inputs.items():
    feature_axes = len(layouts[path].in_axes)
    norms[path] = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)),
                                   axis=tuple(range(x.ndim - feature_axes))))
  return norms


def scores(kernel: jax.Array, norm: jax.Array, layout: pcs.KernelLayout) -> jax.Array:
  """S = |W| * ||X_j||, the norm broadcast along the kernel's input axes."""
  shape = [1] * kernel.ndim
  for axis, size in zip(layout.in_axes, norm.shape):
    shape[axis] = size
  return jnp.abs(kernel) * norm.reshape(shape)


def mask(score: jax.Array, sparsity: float, layout: pcs.KernelLayout) -> jax.Array:
  """True for the d_in - round(s d_in) highest scores of each output's fan-in; of equal
  scores, the lower input index is kept first."""
  if layout.window_axes or layout.batch_axes:
    raise ValueError('wanda.mask: kernels with window or batch axes (convolutions, batched '
                     f'LinearGeneral) are not supported; got {layout}.')
  axes = tuple(layout.out_axes) + tuple(layout.in_axes)
  rows = jnp.transpose(score, axes)
  shape = rows.shape
  rows = rows.reshape(int(np.prod(shape[:len(layout.out_axes)])), -1)
  order = jnp.argsort(-rows, axis=1, stable=True)  # descending; ties: lower index first
  ranks = jnp.argsort(order, axis=1)
  keep = ranks < rows.shape[1] - round(sparsity * rows.shape[1])
  return jnp.transpose(keep.reshape(shape), np.argsort(axes))


def prune(model: nnx.Module, inputs: Dict[Path, jax.Array], sparsity: float
          ) -> Dict[Path, jax.Array]:
  """Prunes every kernel of ``model`` (its Linear / LinearGeneral layers) to ``sparsity``
  by Wanda, in place, and returns the masks by kernel path. ``inputs``: each kernel's input on the
  calibration data, ``{kernel path: array}`` (``CharLM.layer_inputs(tokens)``).

  Raises:
    ValueError: if ``inputs`` lacks a kernel's input.
  """
  layouts = pcs.kernel_layouts(model)
  params = nnx.state(model, nnx.Param)
  kernels = {path for path in layouts if path[-1] == 'kernel'}  # embedding tables aside
  missing = sorted(kernels - set(inputs))
  if missing:
    raise ValueError(f'wanda.prune: `inputs` holds no calibration input for the kernels '
                     f'{missing}; it must cover every kernel ({sorted(kernels)}).')
  masks = {}
  for path, variable in nnx.to_flat_state(params):
    if path in kernels:
      norm = input_norms({path: inputs[path]}, layouts)[path]
      masks[path] = mask(scores(variable[...], norm, layouts[path]), sparsity, layouts[path])
      variable[...] = jnp.where(masks[path], variable[...], 0)
  nnx.update(model, params)
  return masks
