"""The compiled sparse products (C++ through XLA's FFI, ``csrc/sparse_kernels.cc``) and the
pure-JAX reference that stands in where they are absent.

Both compute, in the transposed layout of the weights,

    y^T = act(W^T x^T + b),   x^T: (fan_in, columns),   y^T: (features, columns),

where the columns are the batch (Dense) or batch x output positions (Conv): with x^T
and y^T as given (:func:`matmul_t`), or with x (columns, fan_in) and y (columns, features)
a row per input as a dense layer holds them (:func:`matmul`, the kernel transposing as it
packs). The handlers
are registered with XLA when ``pcs`` is imported, for the CPU platform only.

* Fallback, said once with a warning: on CPU when the library was not built (no compiler
  at install), :func:`matmul_t` runs the reference (a gather and a segment sum;
  :func:`compiled_available` tells which path a CPU run takes). On GPU and TPU it routes to
  what those have: jax's BCSR product for CSR (cuSPARSE on GPU) and, for N:M, the dense
  product with the zeros in place (XLA does not reach the sparse tensor cores), and
  ``pcs.export``'s measured choice keeps each layer dense unless that is faster.
* Transformations: the products work under ``jit``; under ``vmap`` the FFI call uses
  ``vmap_method='expand_dims'`` and the handler loops over the mapped instances, sharing
  weights that are not mapped. Under ``jit`` with sharded inputs XLA gathers the operands
  (the call runs replicated); to shard the batch, call it inside ``shard_map``.
* Platforms: the call is chosen for the platform it is compiled for
  (``jax.lax.platform_dependent``), not from the default backend at trace time; the
  warning above is given where the default backend already tells (a trace cannot know
  where it will be compiled).
* Gradients (reverse mode: ``jax.grad``, ``jax.vjp``): the same on every path, through a
  ``jax.custom_vjp`` whose backward pass is the pure-JAX reference's (the transposed
  product, a scatter-add), with respect to the input, the bias and the stored values
  (the sparsity pattern is fixed: indices, row pointers and positions have no
  cotangent). Forward mode (``jax.jvp``) is not defined.
"""

import ctypes
import functools
import importlib.util
import warnings
from typing import Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pcs.sparse import _formats as formats

ACTIVATIONS = {None: 0, 'relu': 1}
# Where a product's x and y lie (the handlers' ``layout``): 'columns', x^T (fan_in,
# columns) and y^T (features, columns); 'rows', x (columns, fan_in) and y (columns, features).
LAYOUTS = {'columns': 0, 'rows': 1}
_LIBRARY_MODULE = 'pcs.sparse._sparse_kernels'


class _Target(ctypes.Structure):
  """One entry of the library's registration list (``PcsTargets`` in the C++ source)."""
  _fields_ = [('name', ctypes.c_char_p), ('handler', ctypes.c_void_p)]


def targets(library: ctypes.CDLL) -> Dict[str, int]:
  """``{FFI target name: handler address}``, read from the library's own list."""
  library.PcsTargets.restype = ctypes.POINTER(_Target)
  listed, found = library.PcsTargets(), dict[str, int]()
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


def compiled_available() -> bool:
  """Whether the compiled CPU products are registered (else the reference runs)."""
  return _UNAVAILABLE is None


# The platforms the compiled products are registered for; every other one takes the
# layout's own product there (:meth:`pcs.sparse.Format.off_cpu_t`).
COMPILED_PLATFORMS = ('cpu',)


def _say_once(reason: str, instead: str = 'the pure-JAX reference') -> None:
  if reason not in _warned:
    _warned.add(reason)
    warnings.warn(f'pcs.sparse: {reason}; running {instead} instead.', RuntimeWarning,
                  stacklevel=4)


def _warn_if_falling_back() -> None:
  """Says once which stand-in runs, where the default backend tells it."""
  backend = jax.default_backend()
  if backend not in COMPILED_PLATFORMS:
    _say_once(f'the compiled products are CPU-only and the default backend is {backend}',
              "jax's BCSR product (CSR) or the dense product (N:M)")
  elif _UNAVAILABLE is not None:
    _say_once(_UNAVAILABLE)


def _epilogue(y_t, bias, activation):
  """act(y^T + b), b broadcast over the columns."""
  y_t = y_t + bias[:, None]
  return jnp.maximum(y_t, 0.0) if activation == 'relu' else y_t


def _by_platform(args, activation, compiled, fallback):
  """``compiled(*args)`` where the compiled products run (``fallback`` with the reference where the
  library was not built), ``fallback`` with the layout's off-CPU product elsewhere;
  chosen when the call is lowered for its platform."""
  reference = functools.partial(fallback, product='reference_t', activation=activation)
  on_cpu = (functools.partial(compiled, activation=activation) if _UNAVAILABLE is None
            else reference)
  return jax.lax.platform_dependent(
      *args, default=functools.partial(fallback, product='off_cpu_t', activation=activation),
      **{platform: on_cpu for platform in COMPILED_PLATFORMS})


def _matmul_with(x, weight, bias, *, product, activation, layout):
  """act(W^T x^T + b) with the layout's pure-JAX ``product`` (``'reference_t'`` or
  ``'off_cpu_t'``), x and the result in ``layout`` (LAYOUTS)."""
  if layout == 'rows':
    return _matmul_with(x.T, weight, bias, product=product, activation=activation,
                        layout='columns').T
  return _epilogue(getattr(weight, product)(x), bias, activation)


def _compiled_matmul(x, weight, bias, *, activation, layout):
  across = x.shape[-1] if layout == 'columns' else x.shape[-2]
  shape = ((weight.features, across) if layout == 'columns' else (across, weight.features))
  out = jax.ShapeDtypeStruct(x.shape[:-2] + shape, jnp.float32)
  call = jax.ffi.ffi_call(weight.matmul_target, out, vmap_method='expand_dims')
  return call(x, *weight.ffi_operands(), bias, activation=np.int64(ACTIVATIONS[activation]),
              layout=np.int64(LAYOUTS[layout]), **weight.ffi_attributes())


def _reference_vjp(fn, args, y, activation, cotangent):
  """The cotangents of ``args`` for y = act(fn(*args)): ReLU's mask from the output,
  then the reference's own vjp (a linear map: only its transpose runs)."""
  if activation == 'relu':
    cotangent = jnp.where(y > 0, cotangent, 0.0)
  return jax.vjp(fn, *args)[1](cotangent)


def _product(compiled, reference, option):
  """A product ``f(x, weight, bias, activation, value)``: ``compiled`` where the compiled
  kernels run, ``reference`` (with the layout's ``product``) elsewhere (:func:`_by_platform`),
  each given ``option=value`` (static); differentiable through a ``jax.custom_vjp`` whose
  backward pass is the pure-JAX reference's on every path (:func:`_reference_vjp`)."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
  def product(x, weight, bias, activation, value):
    return _by_platform((x, weight, bias), activation,
                        functools.partial(compiled, **{option: value}),
                        functools.partial(reference, **{option: value}))

  def forward(x, weight, bias, activation, value):
    y = product(x, weight, bias, activation, value)
    return y, (x, weight, bias, y)

  def backward(activation, value, residuals, cotangent):
    *args, y = residuals
    linear = functools.partial(reference, product='reference_t', activation=None,
                               **{option: value})
    return _reference_vjp(linear, args, y, activation, cotangent)

  product.defvjp(forward, backward)
  return product


_matmul = _product(_compiled_matmul, _matmul_with, 'layout')


def _zero_bias(weight) -> jax.Array:
  return jnp.zeros((weight.features,), jnp.float32)


def _checked_bias(x, weight, bias, activation, name, fan_in_axis):
  """``bias`` (zeros for None) once the arguments of a product are checked; ``x``'s
  ``fan_in_axis`` must hold the kernel's fan_in."""
  if activation not in ACTIVATIONS:
    raise ValueError(f'`activation` must be one of {list(ACTIVATIONS)}; got {activation!r}.')
  if not isinstance(weight, formats.Format):
    raise TypeError(f'`weight` must be a compressed weight ({", ".join(formats.FORMATS)}: '
                    f'pcs.sparse.CSR, NM); got {type(weight).__name__}.')
  if x.ndim != 2 or x.shape[fan_in_axis] != weight.fan_in:
    wanted = f'({weight.fan_in}, columns)' if fan_in_axis == 0 else f'(columns, {weight.fan_in})'
    raise ValueError(f'`{name}` must have shape {wanted} for a kernel of shape '
                     f'{weight.kernel_shape}; got {x.shape}.')
  if x.dtype != jnp.float32:
    raise TypeError(f'`{name}` must be float32 (the compiled products compute in float32); '
                    f'got {x.dtype}.')
  if bias is None:
    return _zero_bias(weight)
  if bias.shape != (weight.features,) or bias.dtype != jnp.float32:
    raise ValueError(f'`bias` must be float32 of shape ({weight.features},); got {bias.dtype} '
                     f'{bias.shape}.')
  return bias


def matmul_t(x_t: jax.Array, weight: formats.Format, bias: Optional[jax.Array] = None,
             activation: Optional[str] = None) -> jax.Array:
  """y^T = act(W^T x^T + b) for a compressed ``weight``, W^T of shape (features, fan_in).

  Args:
    x_t: (fan_in, columns) float32: the inputs, one per column.
    weight: a compressed weight (:class:`~pcs.sparse.CSR`, :class:`~pcs.sparse.NM`).
    bias: (features,) float32, or None for none.
    activation: None or ``'relu'``, fused into the product's store.

  Returns:
    (features, columns) float32; differentiable in ``x_t``, ``bias`` and the stored
    values (the reference's gradient, on every platform).
  """
  bias = _checked_bias(x_t, weight, bias, activation, 'x_t', 0)
  _warn_if_falling_back()
  return _matmul(x_t, weight, bias, activation, 'columns')


def matmul(x: jax.Array, weight: formats.Format, bias: Optional[jax.Array] = None,
           activation: Optional[str] = None) -> jax.Array:
  """y = act(x W + b) for a compressed (fan_in, features) ``weight``: :func:`matmul_t`'s
  product with x (columns, fan_in) and y (columns, features) a row per input, as a dense
  layer holds them. The kernel reads and writes that layout itself (transposing x as it
  packs it), so no transpose runs around it: at batch 16 on the Zen 3 measured, XLA's two
  transposes added a quarter to a 99%-sparse 4096 x 4096 product (0.36 against 0.29 ms).
  Differentiable as :func:`matmul_t`.
  """
  bias = _checked_bias(x, weight, bias, activation, 'x', 1)
  _warn_if_falling_back()
  return _matmul(x, weight, bias, activation, 'rows')


def reference_matmul_t(x_t: jax.Array, weight: formats.Format,
                       bias: Optional[jax.Array] = None,
                       activation: Optional[str] = None) -> jax.Array:
  """:func:`matmul_t` computed by the pure-JAX reference on any platform."""
  bias = _zero_bias(weight) if bias is None else bias
  return _matmul_with(x_t, weight, bias, product='reference_t', activation=activation,
                      layout='columns')


class ConvGeometry(NamedTuple):
  """A 2-D direct convolution's window (kh, kw), strides (s_h, s_w) and output (Ho, Wo)."""
  window: Tuple[int, int]
  strides: Tuple[int, int]
  out: Tuple[int, int]


def phase_columns(phases: jax.Array, geometry: ConvGeometry) -> jax.Array:
  """x^T of the convolution read from its stride phases: (kh * kw * C, N * Ho * Wo), rows
  in the kernel's (window, channels) order, columns (n, i, j), with

      x^T[(kh, kw, c), (n, i, j)] = z[n, (kh mod s_h, kw mod s_w, c),
                                       i + kh div s_h, j + kw div s_w].
  """
  (kh, kw), (sh, sw), (ho, wo) = geometry
  pa, pb = min(sh, kh), min(sw, kw)
  n, _, hq, wq = phases.shape
  z = phases.reshape(n, pa, pb, -1, hq, wq)
  slices = [z[:, a % sh, b % sw, :, a // sh:a // sh + ho, b // sw:b // sw + wo]
            for a in range(kh) for b in range(kw)]  # (N, C, Ho, Wo) each
  return jnp.stack(slices).transpose(0, 2, 1, 3, 4).reshape(-1, n * ho * wo)


def _conv_with(phases, weight, bias, *, geometry, product, activation):
  """The direct convolution as one product over :func:`phase_columns`: (N, F, Ho, Wo)."""
  y_t = _matmul_with(phase_columns(phases, geometry), weight, bias, product=product,
                     activation=activation, layout='columns')
  return y_t.reshape((weight.features, phases.shape[0]) + geometry.out).swapaxes(0, 1)


def _compiled_conv(phases, weight, bias, *, geometry, activation):
  (kh, kw), (sh, sw), out = geometry
  shape = jax.ShapeDtypeStruct(phases.shape[:-3] + (weight.features,) + tuple(out),
                               jnp.float32)
  call = jax.ffi.ffi_call(weight.conv_target, shape, vmap_method='expand_dims')
  return call(phases, *weight.ffi_operands(), bias, window_h=np.int64(kh),
              window_w=np.int64(kw), stride_h=np.int64(sh), stride_w=np.int64(sw),
              activation=np.int64(ACTIVATIONS[activation]), **weight.ffi_attributes())


_conv = _product(_compiled_conv, _conv_with, 'geometry')


def conv_direct(phases: jax.Array, weight: formats.Format, bias: Optional[jax.Array],
                window: Tuple[int, int], strides: Tuple[int, int], out: Tuple[int, int],
                activation: Optional[str] = None) -> jax.Array:
  """The direct sparse convolution

      y[n, o, i, j] = act(b[o] + sum_{(kh, kw, c): W != 0} W[kh, kw, c, o]
                                   x[n, c, s_h i + kh, s_w j + kw])

  (Park et al., "Faster CNNs with Direct Sparse Convolutions", ICLR 2017) for a sparse
  kernel of ``window`` (kh, kw) x C inputs, giving (N, F, *out). ``phases`` is the padded
  input x split into the stride phases the window reads, z[n, (a, b, c), i, j] =
  x[n, c, s_h i + a, s_w j + b] for a < min(s_h, kh), b < min(s_w, kw), of shape
  (N, phases x C, Hq, Wq): there the strided convolution is a stride-1 one.

  The compiled kernel computes it on CPU; elsewhere, and where the library was not
  built, it is one product over the columns read from the phases
  (:func:`phase_columns`), with :func:`matmul_t`'s stand-ins. Differentiable as
  :func:`matmul_t`.
  """
  bias = _zero_bias(weight) if bias is None else bias
  _warn_if_falling_back()
  geometry = ConvGeometry(tuple(window), tuple(strides), tuple(out))  # type: ignore[arg-type]
  return _conv(phases, weight, bias, activation, geometry)
