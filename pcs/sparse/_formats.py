"""Compressed layouts of a pruned kernel, stored per output feature (rows of W^T).

A Dense kernel (fan_in, features) or a Conv kernel (*window, in, features) is read as the
matrix W of shape (prod(window) * in, features), rows in the kernel's own order (window
offsets, then input channels): ``kernel.reshape(-1, features)``. Both layouts store the
rows of W^T, so one output feature's nonzeros are contiguous:

* :class:`CSR`: compressed sparse rows (values, column indices, row pointers). Column
  indices are uint16 where fan_in <= 65536 (6 bytes per nonzero), else int32.
* :class:`NM`: the N:M layout (Mishra et al., "Accelerating Sparse Deep Neural Networks",
  2021): in every group of M consecutive inputs (input channels, per window offset) at most
  N weights are nonzero; per group the N values and their uint8 positions are stored
  (5 bytes per kept value, no row pointers).
"""

import dataclasses
import functools
from typing import Tuple, Union

import jax
import numpy as np

UINT16_LIMIT = 1 << 16
THREADS_POOL, THREADS_CALLER = 0, 1  # the compiled kernels' `threads` attribute
Array = Union[jax.Array, np.ndarray]  # numpy when built or loaded, jax under a transform


def _matrix_t(kernel: np.ndarray) -> np.ndarray:
  """W^T, (features, fan_in), of a Dense or Conv kernel."""
  return np.ascontiguousarray(np.asarray(kernel, np.float32).reshape(-1, kernel.shape[-1]).T)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=['values', 'indices', 'indptr'],
                   meta_fields=['kernel_shape', 'threads'])
@dataclasses.dataclass(frozen=True)
class CSR:
  """W^T in compressed sparse rows: row r's nonzeros are ``values[indptr[r]:indptr[r+1]]``
  at inputs ``indices[indptr[r]:indptr[r+1]]``.

  Attributes:
    values: (nnz,) float32.
    indices: (nnz,) uint16 (fan_in <= 65536) or int32, the input of each nonzero.
    indptr: (features + 1,) int32 row pointers.
    kernel_shape: the dense kernel's shape, ``(fan_in, features)`` or
      ``(*window, in, features)``.
    threads: ``THREADS_POOL`` (0): the compiled product shares large products out over
      XLA's thread pool; ``THREADS_CALLER`` (1): it runs on the calling thread alone
      (``pcs.export`` picks by measuring).
  """
  values: Array
  indices: Array
  indptr: Array
  kernel_shape: Tuple[int, ...]
  threads: int = 0

  @property
  def features(self) -> int:
    return self.kernel_shape[-1]

  @property
  def fan_in(self) -> int:
    return int(np.prod(self.kernel_shape[:-1]))

  @property
  def nnz(self) -> int:
    return int(self.values.shape[-1])

  @property
  def nbytes(self) -> int:
    return sum(int(a.size) * a.dtype.itemsize for a in (self.values, self.indices, self.indptr))

  def todense(self) -> np.ndarray:
    """The dense kernel, of shape ``kernel_shape``."""
    indptr, indices = np.asarray(self.indptr), np.asarray(self.indices)
    rows = np.repeat(np.arange(self.features), np.diff(indptr))
    matrix_t = np.zeros((self.features, self.fan_in), np.float32)
    matrix_t[rows, indices.astype(np.int64)] = np.asarray(self.values)
    return matrix_t.T.reshape(self.kernel_shape)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=['values', 'positions'],
                   meta_fields=['kernel_shape', 'n', 'm', 'threads'])
@dataclasses.dataclass(frozen=True)
class NM:
  """W^T in the N:M layout: row r, group g holds inputs g*M .. g*M + M - 1, of which the N
  at ``positions[r, g*N:(g+1)*N]`` have the values ``values[r, g*N:(g+1)*N]`` (a group
  with fewer than N nonzeros stores zeros).

  Attributes:
    values: (features, fan_in / M * N) float32.
    positions: (features, fan_in / M * N) uint8, each < M.
    kernel_shape: the dense kernel's shape.
    n, m: the pattern, N < M.
    threads: as in :class:`CSR`.
  """
  values: Array
  positions: Array
  kernel_shape: Tuple[int, ...]
  n: int
  m: int
  threads: int = 0

  @property
  def features(self) -> int:
    return self.kernel_shape[-1]

  @property
  def fan_in(self) -> int:
    return int(np.prod(self.kernel_shape[:-1]))

  @property
  def nnz(self) -> int:
    return int(np.count_nonzero(np.asarray(self.values)))

  @property
  def nbytes(self) -> int:
    return sum(int(a.size) * a.dtype.itemsize for a in (self.values, self.positions))

  def todense(self) -> np.ndarray:
    """The dense kernel, of shape ``kernel_shape``."""
    groups = self.fan_in // self.m
    columns = (np.arange(groups).repeat(self.n) * self.m)[None, :] + np.asarray(
        self.positions, np.int64)
    matrix_t = np.zeros((self.features, self.fan_in), np.float32)
    np.add.at(matrix_t, (np.arange(self.features)[:, None], columns), np.asarray(self.values))
    return matrix_t.T.reshape(self.kernel_shape)


def csr(kernel: np.ndarray) -> CSR:
  """The :class:`CSR` layout of a Dense or Conv ``kernel`` (its zeros are dropped)."""
  matrix_t = _matrix_t(kernel)
  rows, columns = np.nonzero(matrix_t)
  index_dtype = np.uint16 if matrix_t.shape[1] <= UINT16_LIMIT else np.int32
  indptr = np.zeros(matrix_t.shape[0] + 1, np.int64)
  np.cumsum(np.bincount(rows, minlength=matrix_t.shape[0]), out=indptr[1:])
  if indptr[-1] >= 2**31:
    raise ValueError(f'A kernel of shape {kernel.shape} has {indptr[-1]} nonzeros; the CSR '
                     'layout holds fewer than 2**31.')
  return CSR(values=matrix_t[rows, columns], indices=columns.astype(index_dtype),
             indptr=indptr.astype(np.int32), kernel_shape=tuple(kernel.shape))


def nm(kernel: np.ndarray, n: int, m: int, name: str = 'kernel') -> NM:
  """The :class:`NM` layout of ``kernel``, which must have at most ``n`` nonzeros in every
  group of ``m`` consecutive input channels (as ``pcs.prune(params, n_m=(n, m))`` leaves).

  Raises:
    ValueError: naming ``name`` and the densest group found, if the pattern does not hold.
  """
  if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m <= 256):
    raise ValueError(f'`n_m` must be (N, M) with integers 0 < N < M <= 256; got ({n!r}, {m!r}).')
  channels = kernel.shape[-2] if kernel.ndim > 1 else kernel.shape[0]
  if channels % m:
    raise ValueError(f'`n_m`=({n}, {m}): {name} has {channels} input channels, not a multiple '
                     f'of M={m}.')
  matrix_t = _matrix_t(kernel)
  groups = matrix_t.reshape(matrix_t.shape[0], -1, m)
  densest = int(np.count_nonzero(groups, axis=-1).max(initial=0))
  if densest > n:
    raise ValueError(f'`n_m`=({n}, {m}): {name} (shape {tuple(kernel.shape)}) has a group of '
                     f'{m} inputs with {densest} nonzeros, so it holds no {n}:{m} pattern; '
                     f'prune it with pcs.prune(params, n_m=({n}, {m})) first.')
  order = np.argsort(groups == 0, axis=-1, kind='stable')[..., :n]  # nonzeros first
  values = np.take_along_axis(groups, order, axis=-1)
  return NM(values=values.reshape(matrix_t.shape[0], -1),
            positions=order.reshape(matrix_t.shape[0], -1).astype(np.uint8),
            kernel_shape=tuple(kernel.shape), n=n, m=m)


def validate(layer, name: str) -> None:
  """Checks that ``layer``'s arrays are a well-formed layout for its ``kernel_shape``
  (every index in range), so a kernel never reads outside its input.

  Raises:
    ValueError: naming ``name`` and what is wrong.
  """
  def fail(what):
    raise ValueError(f'{name}: {what}.')
  if layer.threads not in (THREADS_POOL, THREADS_CALLER):
    fail(f'threads must be {THREADS_POOL} (the pool) or {THREADS_CALLER} (the calling '
         f'thread), not {layer.threads!r}')
  if isinstance(layer, CSR):
    values, indices, indptr = (np.asarray(a) for a in (layer.values, layer.indices,
                                                      layer.indptr))
    if values.dtype != np.float32 or indptr.dtype != np.int32:
      fail('CSR values must be float32 and row pointers int32')
    if indices.dtype not in (np.uint16, np.int32):
      fail(f'CSR column indices must be uint16 or int32, not {indices.dtype}')
    if values.shape != indices.shape or values.ndim != 1:
      fail('CSR values and indices must be 1-D and of one length')
    if indptr.shape != (layer.features + 1,) or indptr[0] != 0 or indptr[-1] != values.size:
      fail(f'CSR row pointers must run from 0 to {values.size} over {layer.features + 1} '
           'entries')
    if np.any(np.diff(indptr) < 0):
      fail('CSR row pointers must not decrease')
    if indices.size and (indices.min() < 0 or indices.max() >= layer.fan_in):
      fail(f'CSR column indices must lie in [0, {layer.fan_in})')
  elif isinstance(layer, NM):
    values, positions = np.asarray(layer.values), np.asarray(layer.positions)
    kept = layer.fan_in // layer.m * layer.n
    if not 0 < layer.n < layer.m <= 256 or layer.fan_in % layer.m:
      fail(f'N:M needs 0 < N < M <= 256 and M dividing fan_in {layer.fan_in}')
    if values.dtype != np.float32 or positions.dtype != np.uint8:
      fail('N:M values must be float32 and positions uint8')
    if values.shape != (layer.features, kept) or positions.shape != values.shape:
      fail(f'N:M values and positions must have shape {(layer.features, kept)}')
    if positions.size and positions.max() >= layer.m:
      fail(f'N:M positions must be < M = {layer.m}')
  else:
    fail(f'not a CSR or NM layout: {type(layer).__name__}')
