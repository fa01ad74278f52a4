"""The compiled sparse products (C++ through XLA's FFI, ``csrc/sparse_kernels.cc``) and the
pure-JAX reference that stands in where they are absent.

Both compute, in the transposed layout of the kernels,

    y^T = act(W^T x^T + b),   x^T: (fan_in, columns),   y^T: (features, columns),

where the columns are the batch (Dense) or batch x output positions (Conv). The handlers
are registered with XLA when ``pcs`` is imported, for the CPU platform only.

* Fallback, said once with a warning: on CPU when the library was not built (no compiler
  at install), :func:`matmul_t` runs the reference (a gather and a segment sum;
  :func:`kernels_available` tells which path a CPU run takes). On GPU and TPU it routes to
  what those have: jax's BCSR product for CSR (cuSPARSE on GPU) and, for N:M, the dense
  product with the zeros in place (XLA does not reach the sparse tensor cores), and
  ``pcs.export``'s measured choice keeps each layer dense unless that is faster.
* Transformations: the products work under ``jit``; under ``vmap`` the FFI call uses
  ``vmap_method='expand_dims'`` and the kernel loops over the mapped instances, sharing
  weights that are not mapped. Under ``jit`` with sharded inputs XLA gathers the operands
  (the call runs replicated); to shard the batch, call it inside ``shard_map``.
* No gradient is defined (``jax.grad`` raises): the kernels serve inference.
"""

import ctypes
import importlib.util
import warnings
from typing import Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from pcs.sparse import _formats as formats

ACTIVATIONS = {None: 0, 'relu': 1}
_LIBRARY_MODULE = 'pcs.sparse._sparse_kernels'


class _Target(ctypes.Structure):
  """One entry of the library's registration list (``PcsTargets`` in the C++ source)."""
  _fields_ = [('name', ctypes.c_char_p), ('handler', ctypes.c_void_p)]


def targets(library: ctypes.CDLL) -> Dict[str, int]:
  """``{FFI target name: handler address}``, read from the library's own list."""
  library.PcsTargets.restype = ctypes.POINTER(_Target)
  listed, found = library.PcsTargets(), {}
  while listed[len(found)].name is not None:
    entry = listed[len(found)]
    found[entry.name.decode()] = entry.handler
  return found


def _register() -> Optional[str]:
  """Loads the compiled library and registers its handlers; the reason if it cannot."""
  spec = importlib.util.find_spec(_LIBRARY_MODULE)
  if spec is None or spec.origin is None:
    return ('the compiled library pcs/sparse/_sparse_kernels was not built (reinstall pcs '
            'where a C++ compiler is present: pip install -e .)')
  try:
    for name, handler in targets(ctypes.CDLL(spec.origin)).items():
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform='cpu')
  except (OSError, AttributeError) as error:
    return f'the compiled library {spec.origin} could not be loaded: {error}'
  return None


_UNAVAILABLE = _register()
_warned: set = set()


def kernels_available() -> bool:
  """Whether the compiled CPU kernels are registered (else the reference runs)."""
  return _UNAVAILABLE is None


def _say_once(reason: str, instead: str = 'the pure-JAX reference') -> None:
  if reason not in _warned:
    _warned.add(reason)
    warnings.warn(f'pcs.sparse: {reason}; running {instead} instead.', RuntimeWarning,
                  stacklevel=3)


def _nm_inputs(layer: formats.NM) -> jax.Array:
  """(features, kept): the input each stored N:M value reads, group * M + position."""
  groups = layer.fan_in // layer.m
  starts = jnp.repeat(jnp.arange(groups, dtype=jnp.int32) * layer.m, layer.n)
  return starts[None, :] + layer.positions.astype(jnp.int32)


def _reference(x_t, layer, bias, activation):
  """y^T = act(W^T x^T + b) with jnp: gather the inputs of every nonzero, sum per row."""
  if isinstance(layer, formats.CSR):
    rows = jnp.searchsorted(layer.indptr, jnp.arange(layer.nnz, dtype=jnp.int32),
                            side='right') - 1
    terms = layer.values[:, None] * jnp.take(x_t, layer.indices.astype(jnp.int32), axis=0)
    y_t = jax.ops.segment_sum(terms, rows, num_segments=layer.features,
                              indices_are_sorted=True)
  else:
    columns = _nm_inputs(layer)
    y_t = jnp.einsum('fk,fkc->fc', layer.values, jnp.take(x_t, columns, axis=0))
  y_t = y_t + bias[:, None]
  return jnp.maximum(y_t, 0.0) if activation == 'relu' else y_t


def _off_cpu(x_t, layer, bias, activation):
  """y^T = act(W^T x^T + b) with what GPUs and TPUs have: jax's BCSR product for CSR
  (cuSPARSE on GPU), the dense product of the scattered W^T for N:M."""
  from jax.experimental import sparse as jax_sparse  # pylint: disable=g-import-not-at-top
  if isinstance(layer, formats.CSR):
    matrix = jax_sparse.BCSR((layer.values, layer.indices.astype(jnp.int32), layer.indptr),
                             shape=(layer.features, layer.fan_in))
    y_t = matrix @ x_t
  else:
    columns = _nm_inputs(layer)
    rows = jnp.broadcast_to(jnp.arange(layer.features)[:, None], columns.shape)
    w_t = jnp.zeros((layer.features, layer.fan_in), jnp.float32).at[rows, columns].add(
        layer.values)
    y_t = w_t @ x_t
  y_t = y_t + bias[:, None]
  return jnp.maximum(y_t, 0.0) if activation == 'relu' else y_t


def _compiled(x_t, layer, bias, activation):
  out = jax.ShapeDtypeStruct(x_t.shape[:-2] + (layer.features, x_t.shape[-1]), jnp.float32)
  options = dict(activation=np.int64(ACTIVATIONS[activation]),
                 threads=np.int64(layer.threads))
  if isinstance(layer, formats.CSR):
    call = jax.ffi.ffi_call('pcs_csr_matmul', out, vmap_method='expand_dims')
    return call(x_t, layer.values, layer.indices, layer.indptr, bias, **options)
  call = jax.ffi.ffi_call('pcs_nm_matmul', out, vmap_method='expand_dims')
  return call(x_t, layer.values, layer.positions, bias, n=np.int64(layer.n),
              m=np.int64(layer.m), **options)


def matmul_t(x_t: jax.Array, layer: Union[formats.CSR, formats.NM],
             bias: Optional[jax.Array] = None, activation: Optional[str] = None) -> jax.Array:
  """y^T = act(W^T x^T + b) for a sparse ``layer``, W^T of shape (features, fan_in).

  Args:
    x_t: (fan_in, columns) float32: the inputs, one per column.
    layer: a :class:`~pcs.sparse.CSR` or :class:`~pcs.sparse.NM` kernel.
    bias: (features,) float32, or None for none.
    activation: None or ``'relu'``, fused into the product's store.

  Returns:
    (features, columns) float32.
  """
  if activation not in ACTIVATIONS:
    raise ValueError(f'`activation` must be one of {list(ACTIVATIONS)}; got {activation!r}.')
  if not isinstance(layer, (formats.CSR, formats.NM)):
    raise TypeError(f'`layer` must be a pcs.sparse.CSR or NM kernel; got {type(layer).__name__}.')
  if x_t.ndim != 2 or x_t.shape[0] != layer.fan_in:
    raise ValueError(f'`x_t` must have shape ({layer.fan_in}, columns) for a kernel of shape '
                     f'{layer.kernel_shape}; got {x_t.shape}.')
  if x_t.dtype != jnp.float32:
    raise TypeError(f'`x_t` must be float32 (the kernels compute in float32); got {x_t.dtype}.')
  if bias is None:
    bias = jnp.zeros((layer.features,), jnp.float32)
  elif bias.shape != (layer.features,) or bias.dtype != jnp.float32:
    raise ValueError(f'`bias` must be float32 of shape ({layer.features},); got {bias.dtype} '
                     f'{bias.shape}.')
  if jax.default_backend() != 'cpu':
    _say_once(f'the compiled kernels are CPU-only and the default backend is '
              f'{jax.default_backend()}', "jax's BCSR product (CSR) or the dense product (N:M)")
    return _off_cpu(x_t, layer, bias, activation)
  if _UNAVAILABLE is not None:
    _say_once(_UNAVAILABLE)
    return _reference(x_t, layer, bias, activation)
  return _compiled(x_t, layer, bias, activation)


def conv_direct(phases: jax.Array, layer: Union[formats.CSR, formats.NM],
                bias: Optional[jax.Array], window: Tuple[int, int],
                strides: Tuple[int, int], out: Tuple[int, int],
                activation: Optional[str] = None) -> Optional[jax.Array]:
  """The direct sparse convolution, or None where the compiled kernels are absent.

      y[n, o, i, j] = act(b[o] + sum_{(kh, kw, c): W != 0} W[kh, kw, c, o]
                                   x[n, c, s_h i + kh, s_w j + kw])

  (Park et al., "Faster CNNs with Direct Sparse Convolutions", ICLR 2017) for a sparse
  kernel of ``window`` (kh, kw) x C inputs, giving (N, F, *out). ``phases`` is the padded
  input x split into the stride phases the window reads, z[n, (a, b, c), i, j] =
  x[n, c, s_h i + a, s_w j + b] for a < min(s_h, kh), b < min(s_w, kw), of shape
  (N, phases x C, Hq, Wq): there the strided convolution is a stride-1 one. None (the
  caller takes im2col and :func:`matmul_t`, with its fallback) off CPU or without the
  compiled library.
  """
  if _UNAVAILABLE is not None or jax.default_backend() != 'cpu':
    return None
  if bias is None:
    bias = jnp.zeros((layer.features,), jnp.float32)
  shape = jax.ShapeDtypeStruct(phases.shape[:-3] + (layer.features,) + tuple(out),
                               jnp.float32)
  geometry = dict(window_h=np.int64(window[0]), window_w=np.int64(window[1]),
                  stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
                  activation=np.int64(ACTIVATIONS[activation]),
                  threads=np.int64(layer.threads))
  if isinstance(layer, formats.CSR):
    call = jax.ffi.ffi_call('pcs_csr_conv', shape, vmap_method='expand_dims')
    return call(phases, layer.values, layer.indices, layer.indptr, bias, **geometry)
  call = jax.ffi.ffi_call('pcs_nm_conv', shape, vmap_method='expand_dims')
  return call(phases, layer.values, layer.positions, bias, n=np.int64(layer.n),
              m=np.int64(layer.m), **geometry)


def reference_matmul_t(x_t: jax.Array, layer: Union[formats.CSR, formats.NM],
                       bias: Optional[jax.Array] = None,
                       activation: Optional[str] = None) -> jax.Array:
  """:func:`matmul_t` computed by the pure-JAX reference on any platform."""
  bias = jnp.zeros((layer.features,), jnp.float32) if bias is None else bias
  return _reference(x_t, layer, bias, activation)
