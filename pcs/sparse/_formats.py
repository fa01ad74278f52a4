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

Every layout is a :class:`Format`: it names itself (``name``, the key of :data:`FORMATS`
and of the artifact's manifest), its arrays (``arrays``) and its other metadata
(``meta``), rebuilds from them (:meth:`Format.from_arrays`), checks them
(:meth:`Format.validate`), and says how it is computed: the compiled FFI call (target
names, operands after the input, attributes) and the pure-JAX products that stand in for
it (:meth:`Format.reference_t`, :meth:`Format.matrix_t`). The kernels, the artifact and
the adapters read only this interface, so a new layout is one class here (and its C++
handlers).
"""

import dataclasses
import functools
from typing import Any, ClassVar, Dict, Iterator, Mapping, Optional, Tuple, Type, Union

import jax
import jax.numpy as jnp
import numpy as np

UINT16_LIMIT = 1 << 16
THREADS_POOL, THREADS_CALLER = 0, 1  # the compiled kernels' `threads` attribute
Array = Union[jax.Array, np.ndarray]  # numpy when built or loaded, jax under a transform


def _matrix_t(kernel: np.ndarray) -> np.ndarray:
  """W^T, (features, fan_in), of a Dense or Conv kernel."""
  return np.ascontiguousarray(np.asarray(kernel, np.float32).reshape(-1, kernel.shape[-1]).T)


class Format:
  """What every compressed layout is: a frozen dataclass and pytree whose data are the
  arrays named in ``arrays`` and whose metadata are ``kernel_shape``, the fields named in
  ``meta_fields`` and ``threads``.

  Class attributes:
    name: the layout's name (``'csr'``, ``'n_m'``): the key of :data:`FORMATS` and of the
      artifact's manifest.
    arrays: the names of its arrays, in the order the compiled handlers take them after
      the input (:meth:`ffi_operands`).
    meta_fields: its integer metadata besides ``kernel_shape`` and ``threads``, passed to
      the handlers as attributes of those names (:meth:`ffi_attributes`).
    matmul_target, conv_target: the FFI targets of its product and its direct
      convolution (``csrc/sparse_kernels.cc``).

  Every layout has ``kernel_shape`` (the dense kernel's, ``(fan_in, features)`` or
  ``(*window, in, features)``) and ``threads``: ``THREADS_POOL`` (0): the compiled
  product shares large products out over XLA's thread pool; ``THREADS_CALLER`` (1): it
  runs on the calling thread alone (``pcs.export`` picks by measuring).
  """
  name: ClassVar[str]
  arrays: ClassVar[Tuple[str, ...]]
  meta_fields: ClassVar[Tuple[str, ...]] = ()
  matmul_target: ClassVar[str]
  conv_target: ClassVar[str]
  kernel_shape: Tuple[int, ...]
  threads: int

  @property
  def features(self) -> int:
    return self.kernel_shape[-1]

  @property
  def fan_in(self) -> int:
    return int(np.prod(self.kernel_shape[:-1]))

  @property
  def nnz(self) -> int:
    """The stored nonzeros."""
    raise NotImplementedError

  @property
  def nbytes(self) -> int:
    return sum(int(a.size) * a.dtype.itemsize for a in self.ffi_operands())

  def ffi_operands(self) -> Tuple[Any, ...]:
    """The arrays the compiled handlers take after the input, in ``arrays``' order."""
    return tuple(getattr(self, name) for name in self.arrays)

  def meta(self) -> Dict[str, int]:
    """``{field: value}`` of ``meta_fields`` and ``threads``: with ``kernel_shape`` and
    the arrays, all :meth:`from_arrays` needs (the artifact's manifest stores it)."""
    return {name: int(getattr(self, name)) for name in self.meta_fields + ('threads',)}

  def ffi_attributes(self) -> Dict[str, np.int64]:
    """The handlers' attributes that come from the layout: :meth:`meta` as int64."""
    return {name: np.int64(value) for name, value in self.meta().items()}

  @classmethod
  def from_arrays(cls, kernel_shape, arrays: Mapping[str, Array], **meta) -> 'Format':
    """The layout of ``kernel_shape`` holding ``arrays`` (``{name: array}`` for every
    name in ``arrays``) and ``meta`` (the fields of :meth:`meta`; ``threads`` defaults
    to the pool). Not checked: see :meth:`validate`.

    Raises:
      ValueError: if an array or a metadata field is missing or unknown.
    """
    if set(arrays) != set(cls.arrays):
      raise ValueError(f'A {cls.name} layout holds the arrays {list(cls.arrays)}; got '
                       f'{sorted(arrays)}.')
    unknown = set(meta) - set(cls.meta_fields) - {'threads'}
    if unknown or set(cls.meta_fields) - set(meta):
      raise ValueError(f'A {cls.name} layout takes the metadata {list(cls.meta_fields)} '
                       f'(and threads); got {sorted(meta)}.')
    return cls(kernel_shape=tuple(int(d) for d in kernel_shape), **arrays,  # type: ignore[call-arg]
               **{k: int(v) for k, v in meta.items()})

  def with_values(self, dtype) -> 'Format':
    """This layout with its values stored as ``dtype`` where the format takes it (CSR:
    float32 or bfloat16, 2 bytes a value instead of 4, rounded to 8 bits of mantissa);
    unchanged where it does not (N:M keeps float32)."""
    del dtype
    return self

  def validate(self, name: str) -> None:
    """Checks that the arrays are a well-formed layout for ``kernel_shape`` (every index
    in range), so a kernel never reads outside its input.

    Raises:
      ValueError: naming ``name`` and what is wrong.
    """
    problem = None
    if self.threads not in (THREADS_POOL, THREADS_CALLER):
      problem = (f'threads must be {THREADS_POOL} (the pool) or {THREADS_CALLER} (the '
                 f'calling thread), not {self.threads!r}')
    problem = problem or next(self._problems(), None)
    if problem is not None:
      raise ValueError(f'{name}: {problem}.')

  def _problems(self) -> Iterator[str]:
    """What is wrong with the arrays, first problem first."""
    raise NotImplementedError

  def todense(self) -> np.ndarray:
    """The dense kernel, of shape ``kernel_shape`` (numpy, float32)."""
    raise NotImplementedError

  def reference_t(self, x_t: jax.Array) -> jax.Array:
    """W^T x^T, (features, columns), in pure JAX from the stored entries alone: the
    reference the compiled kernels are replaced by, and whose gradient they take."""
    raise NotImplementedError

  def matrix_t(self) -> jax.Array:
    """The dense W^T, (features, fan_in), scattered in JAX (under a transform too)."""
    raise NotImplementedError

  def off_cpu_t(self, x_t: jax.Array) -> jax.Array:
    """W^T x^T with what GPUs and TPUs have: by default the dense product of
    :meth:`matrix_t` (XLA reaches no sparse unit for it)."""
    return self.matrix_t() @ x_t


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=['values', 'indices', 'indptr'],
                   meta_fields=['kernel_shape', 'threads'])
@dataclasses.dataclass(frozen=True)
class CSR(Format):
  """W^T in compressed sparse rows: row r's nonzeros are ``values[indptr[r]:indptr[r+1]]``
  at inputs ``indices[indptr[r]:indptr[r+1]]``.

  Attributes:
    values: (nnz,) float32, or bfloat16 (:meth:`with_values`).
    indices: (nnz,) uint16 (fan_in <= 65536) or int32, the input of each nonzero.
    indptr: (features + 1,) int32 row pointers.
    kernel_shape, threads: as every :class:`Format`.
  """
  name = 'csr'
  arrays = ('values', 'indices', 'indptr')
  matmul_target = 'pcs_csr_matmul'
  conv_target = 'pcs_csr_conv'
  values: Array
  indices: Array
  indptr: Array
  kernel_shape: Tuple[int, ...]
  threads: int = THREADS_POOL

  @property
  def nnz(self) -> int:
    return int(self.values.shape[-1])

  def with_values(self, dtype) -> 'CSR':
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(jnp.bfloat16)):
      raise ValueError(f'CSR values are float32 or bfloat16; got {np.dtype(dtype)}.')
    return dataclasses.replace(self, values=self.values.astype(dtype))

  def todense(self) -> np.ndarray:
    indptr, indices = np.asarray(self.indptr), np.asarray(self.indices)
    rows = np.repeat(np.arange(self.features), np.diff(indptr))
    matrix_t = np.zeros((self.features, self.fan_in), np.float32)
    matrix_t[rows, indices.astype(np.int64)] = np.asarray(self.values, np.float32)
    return matrix_t.T.reshape(self.kernel_shape)

  def _rows(self) -> jax.Array:
    """(nnz,): the row of W^T of every stored entry."""
    return jnp.searchsorted(self.indptr, jnp.arange(self.nnz, dtype=jnp.int32),
                            side='right') - 1

  def reference_t(self, x_t):
    """y^T[r] = sum_k values[k] x^T[indices[k]] over r's entries: a gather and a
    segment sum."""
    terms = self.values.astype(jnp.float32)[:, None] * jnp.take(
        x_t, self.indices.astype(jnp.int32), axis=0)
    return jax.ops.segment_sum(terms, self._rows(), num_segments=self.features,
                               indices_are_sorted=True)

  def matrix_t(self):
    return jnp.zeros((self.features, self.fan_in), jnp.float32).at[
        self._rows(), self.indices.astype(jnp.int32)].add(self.values.astype(jnp.float32))

  def off_cpu_t(self, x_t):
    """jax's BCSR product (cuSPARSE on GPU)."""
    from jax.experimental import sparse as jax_sparse  # pylint: disable=g-import-not-at-top
    matrix = jax_sparse.BCSR((self.values.astype(jnp.float32), self.indices.astype(jnp.int32),
                              self.indptr),
                             shape=(self.features, self.fan_in))
    return matrix @ x_t

  def _problems(self):
    values, indices, indptr = (np.asarray(a) for a in self.ffi_operands())
    if values.dtype not in (np.float32, jnp.bfloat16) or indptr.dtype != np.int32:
      yield 'CSR values must be float32 or bfloat16 and row pointers int32'
    if indices.dtype not in (np.uint16, np.int32):
      yield f'CSR column indices must be uint16 or int32, not {indices.dtype}'
    if values.shape != indices.shape or values.ndim != 1:
      yield 'CSR values and indices must be 1-D and of one length'
    if indptr.shape != (self.features + 1,) or indptr[0] != 0 or indptr[-1] != values.size:
      yield (f'CSR row pointers must run from 0 to {values.size} over {self.features + 1} '
             'entries')
    if np.any(np.diff(indptr) < 0):
      yield 'CSR row pointers must not decrease'
    if indices.size and (indices.min() < 0 or indices.max() >= self.fan_in):
      yield f'CSR column indices must lie in [0, {self.fan_in})'


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=['values', 'positions'],
                   meta_fields=['kernel_shape', 'n', 'm', 'threads'])
@dataclasses.dataclass(frozen=True)
class NM(Format):
  """W^T in the N:M layout: row r, group g holds inputs g*M .. g*M + M - 1, of which the N
  at ``positions[r, g*N:(g+1)*N]`` have the values ``values[r, g*N:(g+1)*N]`` (a group
  with fewer than N nonzeros stores zeros).

  Attributes:
    values: (features, fan_in / M * N) float32.
    positions: (features, fan_in / M * N) uint8, each < M.
    kernel_shape, threads: as every :class:`Format`.
    n, m: the pattern, N < M.
  """
  name = 'n_m'
  arrays = ('values', 'positions')
  meta_fields = ('n', 'm')
  matmul_target = 'pcs_nm_matmul'
  conv_target = 'pcs_nm_conv'
  values: Array
  positions: Array
  kernel_shape: Tuple[int, ...]
  n: int
  m: int
  threads: int = THREADS_POOL

  @property
  def nnz(self) -> int:
    return int(np.count_nonzero(np.asarray(self.values)))

  def todense(self) -> np.ndarray:
    matrix_t = np.zeros((self.features, self.fan_in), np.float32)
    np.add.at(matrix_t, (np.arange(self.features)[:, None], np.asarray(self._inputs())),
              np.asarray(self.values))
    return matrix_t.T.reshape(self.kernel_shape)

  def _inputs(self) -> jax.Array:
    """(features, kept): the input each stored value reads, group * M + position."""
    groups = self.fan_in // self.m
    starts = jnp.repeat(jnp.arange(groups, dtype=jnp.int32) * self.m, self.n)
    return starts[None, :] + self.positions.astype(jnp.int32)

  def reference_t(self, x_t):
    """y^T[r] = sum_k values[r, k] x^T[inputs[r, k]]: a gather and a contraction."""
    return jnp.einsum('fk,fkc->fc', self.values, jnp.take(x_t, self._inputs(), axis=0))

  def matrix_t(self):
    columns = self._inputs()
    rows = jnp.broadcast_to(jnp.arange(self.features)[:, None], columns.shape)
    return jnp.zeros((self.features, self.fan_in), jnp.float32).at[rows, columns].add(
        self.values)

  def _problems(self):
    values, positions = np.asarray(self.values), np.asarray(self.positions)
    kept = self.fan_in // self.m * self.n
    if not 0 < self.n < self.m <= 256 or self.fan_in % self.m:
      yield f'N:M needs 0 < N < M <= 256 and M dividing fan_in {self.fan_in}'
    if values.dtype != np.float32 or positions.dtype != np.uint8:
      yield 'N:M values must be float32 and positions uint8'
    if values.shape != (self.features, kept) or positions.shape != values.shape:
      yield f'N:M values and positions must have shape {(self.features, kept)}'
    if positions.size and positions.max() >= self.m:
      yield f'N:M positions must be < M = {self.m}'


FORMATS: Dict[str, Type[Format]] = {cls.name: cls for cls in (CSR, NM)}


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


def nm(kernel: np.ndarray, n: int, m: int, name: Optional[str] = None) -> NM:
  """The :class:`NM` layout of ``kernel``, which must have at most ``n`` nonzeros in every
  group of ``m`` consecutive input channels (as ``pcs.prune(params, n_m=(n, m))`` leaves).

  Raises:
    ValueError: naming ``name`` (default: the kernel and its shape) and the densest group
      found, if the pattern does not hold.
  """
  name = name or f'the kernel of shape {tuple(kernel.shape)}'
  if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m <= 256):
    raise ValueError(f'`n_m` must be (N, M) with integers 0 < N < M <= 256; got ({n!r}, {m!r}).')
  channels = kernel.shape[-2] if kernel.ndim > 1 else kernel.shape[0]
  if channels % m:
    raise ValueError(f'`n_m`=({n}, {m}): {name} has {channels} input channels, not a multiple '
                     f'of M={m}; leave it out (pcs.export(..., where=...)) to keep it dense.')
  matrix_t = _matrix_t(kernel)
  groups = matrix_t.reshape(matrix_t.shape[0], -1, m)
  densest = int(np.count_nonzero(groups, axis=-1).max(initial=0))
  if densest > n:
    raise ValueError(f'`n_m`=({n}, {m}): {name} has a group of '
                     f'{m} inputs with {densest} nonzeros, so it holds no {n}:{m} pattern; '
                     f'prune it with pcs.prune(params, n_m=({n}, {m})) first.')
  order = np.argsort(groups == 0, axis=-1, kind='stable')[..., :n]  # nonzeros first
  values = np.take_along_axis(groups, order, axis=-1)
  return NM(values=values.reshape(matrix_t.shape[0], -1),
            positions=order.reshape(matrix_t.shape[0], -1).astype(np.uint8),
            kernel_shape=tuple(kernel.shape), n=n, m=m)


def compress(kernel: np.ndarray, n_m: Optional[Tuple[int, int]] = None,
             name: Optional[str] = None) -> Format:
  """:func:`nm` of ``kernel`` with ``n_m`` = (N, M), else :func:`csr`."""
  return csr(kernel) if n_m is None else nm(kernel, *n_m, name=name)
