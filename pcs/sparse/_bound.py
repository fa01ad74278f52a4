"""A model's call compiled with its arrays bound on device: one dispatch per call, given
only the arrays the call reads.

``exported.bind(model)`` returns a :class:`BoundCall`. At batch 1 a sparse model's
compiled work is short (ResNet-20 at 95%: about 0.3 ms), so what a call costs around it
counts:

- The bound pytrees (a linen model's variables and its export, or an NNX model's state)
  are placed on the default device and flattened once. A call passes the compiled
  function a flat list of arrays: it neither flattens the pytrees again nor compares their
  structure with the compiled one's (on the mnist1d CNN at batch 1 that was about a tenth
  of the call).
- Of those arrays, a call passes the ones it reads. The variables hold arrays the sparse
  model never reads: the dense kernel of each layer exported sparse, and the scale, bias
  and statistics of each batch norm folded into the layer before it. The dispatch handles
  every argument, even one the compiled function drops (ResNet-20 at 95% reads 88 of its
  194 arrays; BENCHMARKS.md profiles its call).
- The model's ReLUs on the output of a product that applied its own are left out
  (:func:`pcs.sparse._relu.without_fused_relus`).

The arrays a call reads are those its trace reads. The first call traces the model once
outside ``jax.jit`` to find them; the compiled function takes that trace. A later input
signature (another batch) is traced under ``jax.jit`` as usual, and where it would read an
array left out (no model seen does), that array is passed from then on.
"""

from typing import AbstractSet, Any, Callable, Dict, List, Set, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from pcs.sparse import _relu as relu_lib


class _Unpassed(Exception):
  """Raised while tracing: the trace reads bound arrays the call does not pass (their
  indices, ``missing``)."""

  def __init__(self, missing: Set[int]):
    super().__init__(f'the trace reads the bound arrays {sorted(missing)}, not passed')
    self.missing = missing


def _signature(args) -> Any:
  """The structure, shapes and dtypes of ``args`` (arrays, or tracers of them)."""
  flat, tree = jax.tree.flatten(args)
  return tree, tuple((np.shape(a), jnp.result_type(a)) for a in flat)


def _replaceable(leaf) -> bool:
  """Whether zeros of ``leaf``'s shape and dtype can stand in for it unread: a number or
  bool array that is not weakly typed (a stand-in must trace as the array does)."""
  return bool((jnp.issubdtype(leaf.dtype, jnp.number) or jnp.issubdtype(leaf.dtype, jnp.bool_))
              and not getattr(leaf, 'weak_type', False))


class BoundCall:
  """``f(*args) = fn(*bound, *args)``, compiled once per input signature (the structure,
  shapes and dtypes of ``args``), with ``bound`` on the default device and each call
  given only the bound arrays it reads (module docstring).

  An array left out is zeros of its shape in the compiled function, which XLA removes as
  dead code; one that zeros cannot stand in for (a PRNG key, a weakly typed scalar) is
  always passed.
  """

  def __init__(self, fn: Callable, *bound: Any):
    self._fn = fn
    self._leaves, self._treedef = jax.tree.flatten(jax.device_put(bound))
    self._kept: List[int] = []  # the indices of the leaves passed
    self._passed: List[jax.Array] = []
    self._run: Any = None
    self._traces: Dict[Any, Tuple[Any, Any]] = {}  # traced outside jax.jit, for its trace

  def _trace(self, leaves, *args) -> Tuple[Any, Any]:
    """``(closed jaxpr, output tree)`` of the call on ``leaves`` (every bound array), without
    the fused ReLUs (:func:`pcs.sparse._relu.without_fused_relus`)."""
    return relu_lib.without_fused_relus(
        lambda leaves, *a: self._fn(*jax.tree.unflatten(self._treedef, leaves), *a),
        leaves, *args)

  def _read(self, closed) -> Set[int]:
    """The indices of the bound arrays a trace reads (its equations' inputs and its
    outputs, at its top level), and of those zeros cannot stand in for."""
    atoms = [v for eqn in closed.jaxpr.eqns for v in eqn.invars] + list(closed.jaxpr.outvars)
    read = {v for v in atoms if isinstance(v, jax_core.Var)}
    return {i for i, (var, leaf) in enumerate(zip(closed.jaxpr.invars, self._leaves))
            if var in read or not _replaceable(leaf)}  # the bound arrays come first

  def _prepare(self, args, missing: AbstractSet[int] = frozenset()) -> None:
    """Traces the call at ``args`` and compiles it given the arrays read so far, those
    this trace reads and ``missing``."""
    closed, tree = self._trace(self._leaves, *args)
    self._traces[_signature(args)] = closed, tree
    kept = sorted(set(self._kept) | self._read(closed) | missing)
    unread = {i: (leaf.shape, leaf.dtype) for i, leaf in enumerate(self._leaves)
              if i not in kept}

    def run(passed, *args):
      given = dict(zip(kept, passed))
      leaves = [given[i] if i in given else jnp.zeros(*unread[i])
                for i in range(len(self._leaves))]
      closed, tree = self._traces.pop(_signature(args), None) or self._trace(leaves, *args)
      missing = self._read(closed) - set(kept)
      if missing:
        raise _Unpassed(missing)
      out = jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *leaves, *jax.tree.leaves(args))
      return jax.tree.unflatten(tree, out)
    self._kept, self._passed, self._run = kept, [self._leaves[i] for i in kept], jax.jit(run)

  def __call__(self, *args):
    return self._compiled('__call__', args)

  def trace(self, *args) -> jax.stages.Traced:
    """The compiled call traced at ``args``, as ``jax.jit(f).trace(*args)``; its
    ``.lower()`` gives the program XLA compiles."""
    return self._compiled('trace', args)

  def _compiled(self, method: str, args) -> Any:
    """``getattr(compiled call, method)(passed arrays, *args)``, compiled first where no
    call was, and again, given more arrays, where the trace at ``args`` reads an array
    left out (each time with those arrays added, so it ends)."""
    if self._run is None:
      self._prepare(args)
    while True:
      try:
        return getattr(self._run, method)(self._passed, *args)
      except _Unpassed as unpassed:
        self._prepare(args, unpassed.missing)
