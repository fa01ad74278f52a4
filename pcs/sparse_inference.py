"""Sparse inference for pruned Flax linen models: kernels stored so that zeros are skipped.

``export`` turns every selected Dense/Conv kernel into a 2-D (fan_in, features) sparse
matrix (convolutions via im2col: patches ordered (in, *window), as produced by
``jax.lax.conv_general_dilated_patches``); ``sparse_apply`` runs the unchanged model
with ``flax.linen.intercept_methods``, replacing each exported layer's dense product
by a sparse one. Formats:

* ``'bcoo'``: ``jax.experimental.sparse.BCOO`` (coordinate list), ``x @ W``;
* ``'bcsr'``: ``jax.experimental.sparse.BCSR`` of W^T (compressed rows), ``(W^T x^T)^T``;
* ``'n_m'``: the N:M compressed layout (Mishra et al., 2021): per group of M inputs the
  N kept values and their uint8 positions; ``x`` is gathered and contracted.
"""

import importlib
from typing import Any, Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pcs.core import _extras as extras
from pcs.core import _selection as selection

FORMATS = ('bcoo', 'bcsr', 'n_m')


class NMKernel(NamedTuple):
  """N:M compressed (fan_in, features) kernel: values and positions, (fan_in / M * N, features)."""
  values: jax.Array
  positions: jax.Array  # uint8 offsets within each group of M inputs
  m: int


def _as_matrix(kernel: jax.Array) -> jax.Array:
  """(..., in, out) -> (in * prod(window), out), rows ordered (in, *window) like the patches."""
  if kernel.ndim == 2:
    return kernel
  spatial = kernel.ndim - 2
  order = (spatial,) + tuple(range(spatial)) + (spatial + 1,)
  moved = jnp.transpose(kernel, order)
  return moved.reshape(-1, kernel.shape[-1])


def _compress_n_m(matrix: np.ndarray, kernel: jax.Array, m: int) -> NMKernel:
  # Groups of M consecutive *input channels* (the N:M axis of pcs.prune), per window offset.
  if kernel.ndim > 2:
    window = int(np.prod(kernel.shape[:-2]))
    fan_in = kernel.shape[-2]
    matrix = matrix.reshape(fan_in, window, -1).transpose(1, 0, 2).reshape(window * fan_in, -1)
  rows, features = matrix.shape
  groups = matrix.reshape(rows // m, m, features)
  kept = np.count_nonzero(groups, axis=1).max()
  n = max(int(kept), 1)
  order = np.argsort(groups == 0, axis=1, kind='stable')[:, :n, :]  # nonzeros first
  values = np.take_along_axis(groups, order, axis=1)
  return NMKernel(jnp.asarray(values.reshape(-1, features)),
                  jnp.asarray(order.reshape(-1, features).astype(np.uint8)), m)


def export(params: Any, *, format: str = 'bcoo',  # pylint: disable=redefined-builtin
           where: selection.Where = None) -> Dict[Tuple[str, ...], Any]:
  """Sparse copies of the selected ``kernel`` leaves, keyed by their module path.

  Args:
    params: the model's params (after :func:`pcs.prune`).
    format: ``'bcoo'``, ``'bcsr'`` or ``'n_m'`` (needs an N:M pattern along the input
      channels, e.g. from ``pcs.prune(params, n_m=(2, 4))``; M is inferred as the
      smallest group size in {2, 4, 8, 16} that holds the pattern).
    where: leaves to export (default: every leaf with ndim >= 2); only leaves named
      ``kernel`` of Dense/Conv layers are used by :func:`sparse_apply`.

  Returns:
    ``{module_path: sparse kernel}``.

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> exported = pcs.export({'Dense_0': {'kernel': jnp.array([[0.0, 1.0], [2.0, 0.0]])}})
    >>> exported[('Dense_0',)].nse
    2
  """
  if format not in FORMATS:
    raise ValueError(f'`format` must be one of {FORMATS}; got {format!r}.')
  mask = selection.select(params, where)
  out = {}
  for path, kernel in selection.selected_leaves(params, mask):
    names = tuple(getattr(k, 'key', str(k)) for k in path)
    if names[-1] != 'kernel':
      continue
    matrix = _as_matrix(jnp.asarray(kernel))
    if format == 'bcoo':
      out[names[:-1]] = _sparse().BCOO.fromdense(matrix)
    elif format == 'bcsr':
      out[names[:-1]] = _sparse().BCSR.fromdense(matrix.T)
    else:
      out[names[:-1]] = _n_m_from(np.asarray(matrix), kernel, names)
  return out


def _n_m_from(matrix, kernel, names):
  fan_in = kernel.shape[-2]
  for m in (2, 4, 8, 16):
    if fan_in % m:
      continue
    candidate = _compress_n_m(matrix, kernel, m)
    n = candidate.values.shape[0] // (matrix.shape[0] // m)
    if n < m:
      return candidate
  raise ValueError(f'`format`=n_m: the kernel of {"/".join(names[:-1])} (shape {kernel.shape}) '
                   'has no N:M pattern with N < M along its input channels; prune it with '
                   'pcs.prune(params, n_m=(N, M)) first.')


def _sparse():
  """jax.experimental.sparse, loaded on first use (it imports scipy.sparse)."""
  return importlib.import_module('jax.experimental.sparse')


def _sparse_matmul(x2d: jax.Array, kernel: Any) -> jax.Array:
  sparse = _sparse()
  if isinstance(kernel, sparse.BCOO):
    return x2d @ kernel
  if isinstance(kernel, sparse.BCSR):
    return (kernel @ x2d.T).T
  groups = x2d.shape[1] // kernel.m
  n = kernel.values.shape[0] // groups
  x3 = x2d.reshape(x2d.shape[0], groups, kernel.m)
  positions = kernel.positions.reshape(groups, n, -1).astype(jnp.int32)
  gathered = jnp.take_along_axis(x3[:, :, :, None], positions[None], axis=2)  # (B, G, n, out)
  return jnp.einsum('bgnf,gnf->bf', gathered, kernel.values.reshape(groups, n, -1))


def _normalize_padding(padding, spatial):
  if isinstance(padding, str):
    if padding not in ('SAME', 'VALID'):
      raise ValueError(f'sparse_apply supports SAME/VALID/explicit padding; got {padding!r}.')
    return padding
  if isinstance(padding, int):
    return [(padding, padding)] * spatial
  return [tuple(p) if not isinstance(p, int) else (p, p) for p in padding]


def _conv(module: Any, x: jax.Array, kernel: Any, bias) -> jax.Array:
  spatial = len(module.kernel_size)
  if module.feature_group_count != 1 or any(
      d not in (None, 1) and d != (1,) * spatial for d in (module.input_dilation,
                                                           module.kernel_dilation)):
    raise ValueError('sparse_apply supports convolutions without groups or dilation.')
  strides = module.strides or 1
  strides = (strides,) * spatial if isinstance(strides, int) else tuple(strides)
  letters = 'DHW'[-spatial:]
  patches = jax.lax.conv_general_dilated_patches(
      x, tuple(module.kernel_size), strides, _normalize_padding(module.padding, spatial),
      dimension_numbers=('N' + letters + 'C', letters + 'IO', 'N' + letters + 'C'))
  if isinstance(kernel, NMKernel):  # its groups run over input channels: order (window, in)
    channels = x.shape[-1]
    patches = patches.reshape(patches.shape[:-1] + (channels, -1))
    patches = jnp.swapaxes(patches, -1, -2).reshape(patches.shape[:-2] + (-1,))
  y = _sparse_matmul(patches.reshape(-1, patches.shape[-1]), kernel)
  y = y.reshape(patches.shape[:-1] + (y.shape[-1],))
  return y if bias is None else y + bias


def sparse_apply(model: Any, variables: Any, exported: Dict[Tuple[str, ...], Any],
                 *args, **kwargs):
  """``model.apply(variables, *args, **kwargs)`` with the exported layers computed sparsely.

  Every ``nn.Dense`` or ``nn.Conv`` whose module path is in ``exported`` uses its sparse
  kernel; all other layers (norms, pooling, unexported kernels) run as usual. Jittable
  (the sparse kernels are pytrees). Needs flax (``pip install 'pcs[export]'``).

  Example:
    >>> import jax.numpy as jnp, flax.linen as nn, pcs
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return nn.Dense(2, name='Dense_0')(x)
    >>> params = {'Dense_0': {'kernel': jnp.array([[0.0, 1.0], [2.0, 0.0]]), 'bias': jnp.zeros(2)}}
    >>> pcs.sparse_apply(Net(), {'params': params}, pcs.export(params), jnp.ones((1, 2)))
    Array([[2., 1.]], dtype=float32)
  """
  nn = extras.require('flax.linen', 'pcs.sparse_apply')
  params = variables['params']

  def interceptor(next_fun, call_args, call_kwargs, context):
    module = context.module
    path = tuple(module.path)
    if (context.method_name != '__call__' or path not in exported
        or not isinstance(module, (nn.Dense, nn.Conv))):
      return next_fun(*call_args, **call_kwargs)
    node = params
    for name in path:
      node = node[name]
    bias = node.get('bias') if module.use_bias else None
    x = call_args[0]
    if isinstance(module, nn.Dense):
      y = _sparse_matmul(x.reshape(-1, x.shape[-1]), exported[path])
      y = y.reshape(x.shape[:-1] + (y.shape[-1],))
      return y if bias is None else y + bias
    return _conv(module, x, exported[path], bias)

  with nn.intercept_methods(interceptor):
    return model.apply(variables, *args, **kwargs)
