"""ReLUs moved into the sparse products' store: which layers feed one, found in a trace,
and the model's own ReLU on them dropped from the compiled call.

An XLA op after a sparse product costs more than its work at batch 1: on the Zen 4
measured, one ReLU on the 1024 outputs of a sparse layer took the call from 21 to 56 us,
where the same ReLU after XLA's own dense dot cost nothing (XLA runs the op after the
custom call with a hand-off of its own; not traced further). Flax applies activations
outside its layers, so:

- :func:`relu_only` finds the layers to fuse. The adapters trace the model with every
  candidate layer sparse and its folded batch norm the identity, each sparse layer's
  output wrapped in a named identity (:func:`marked`), and keep the layers whose every use
  is a ReLU, ``max(y, 0)`` (``jax.nn.relu``, ``nnx.relu``, ``jnp.maximum(y, 0)``). An
  output also read elsewhere (a residual branch, the model's result), or whose ReLU is one
  step of a larger function (a jit of more than the ReLU), is left alone.
- :func:`without_fused_relus` traces the model without the ReLUs that read a product
  which applied its own, and the bound call compiles that trace (``pcs/sparse/_bound.py``):
  ``relu(y) = y`` for ``y = relu(W^T x + b)`` (ReLU is idempotent), so the model computes
  what it did, with those ops gone (the 784-1024-1024-10 MLP at 95%, batch 1: 0.045 ms
  against 0.099 ms with XLA's ReLUs).
"""

import contextvars
import itertools
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set, Tuple, Union

import jax
from jax.extend import core as jax_core

from pcs.core import _paths as paths

Path = Tuple[Any, ...]
_MARK = 'pcs_layer_output_'
# The equations that compute a ReLU when their one body does: the calls jax.nn.relu makes
# (a custom_jvp of a jit) and the ones that only wrap a function (remat).
_CALLS = ('jit', 'pjit', 'closed_call', 'custom_jvp_call', 'custom_vjp_call', 'remat2')
_traces = itertools.count()


class _Marks(NamedTuple):
  """One trace's marking: its number (in every marker's name, so that a marker in a
  nested jit whose trace JAX cached from another trace is not taken for one of these)
  and the (layer path, ReLU fused) of each output marked, in order."""
  trace: int
  marks: List[Tuple[Path, bool]]

  def name(self, index: int) -> str:
    return f'{_MARK}{self.trace}_{index}'


_marking: contextvars.ContextVar[Optional[_Marks]] = contextvars.ContextVar(
    'pcs_sparse_relu_marking', default=None)


def marked(y: jax.Array, path: Path, fused: bool) -> jax.Array:
  """``y``, the output of the sparse layer at ``path`` (``fused``: its product applied a
  ReLU); while :func:`relu_only` or :func:`without_fused_relus` traces, wrapped in an
  identity named for it (a ``jit`` equation of its own in the jaxpr)."""
  marking = _marking.get()
  if marking is None:
    return y

  def identity(value):
    return value
  identity.__name__ = marking.name(len(marking.marks))
  marking.marks.append((tuple(path), bool(fused)))
  return jax.jit(identity)(y)


def _traced(fn: Callable, *args) -> Tuple[Any, Any, _Marks]:
  """``(closed jaxpr, output shapes, marking)`` of ``fn(*args)`` traced with marking on."""
  marking = _Marks(next(_traces), [])
  token = _marking.set(marking)
  try:
    # A new function each time: a trace of ``fn`` cached without the markers is not reused.
    closed, shapes = jax.make_jaxpr(lambda *a: fn(*a), return_shape=True)(*args)
  finally:
    _marking.reset(token)
  return closed, shapes, marking


def _is_marker(eqn) -> bool:
  return (eqn.primitive.name in ('jit', 'pjit')
          and str(eqn.params.get('name', '')).startswith(_MARK))


def _is_zero(atom) -> bool:
  return isinstance(atom, jax_core.Literal) and getattr(atom.val, 'shape', ()) == () and (
      atom.val == 0)


def _computes_relu(jaxpr) -> bool:
  """Whether ``jaxpr`` (one input, one output) is ``max(x, 0)``, directly or through
  nested calls (``jax.nn.relu`` is a custom_jvp of a jit of it)."""
  return (len(jaxpr.invars) == 1 and len(jaxpr.outvars) == 1 and len(jaxpr.eqns) == 1
          and jaxpr.eqns[0].outvars == jaxpr.outvars
          and _is_relu_of(jaxpr.eqns[0], jaxpr.invars[0]))


def _is_relu_of(eqn, var) -> bool:
  """Whether ``eqn`` computes ``max(var, 0)`` and reads nothing else."""
  if eqn.primitive.name == 'max':
    a, b = eqn.invars
    return (a is var and _is_zero(b)) or (b is var and _is_zero(a))
  inner = eqn.params.get('call_jaxpr', eqn.params.get('jaxpr'))
  if (eqn.primitive.name not in _CALLS or inner is None or len(eqn.invars) != 1
      or eqn.invars[0] is not var):
    return False
  return _computes_relu(getattr(inner, 'jaxpr', inner))


def _sub_jaxprs(value) -> List[Any]:
  """The jaxprs held in an equation's parameter (a jaxpr, or a tuple of them: cond's
  branches)."""
  if isinstance(value, jax_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jax_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _verdicts(jaxpr, out: Dict[str, bool]) -> None:
  """``out[marker name]``: whether that marked output is read by ReLUs only, at every
  level of ``jaxpr`` (a marker met twice must pass both times)."""
  readers: Dict[Any, list] = {}
  for eqn in jaxpr.eqns:
    for var in eqn.invars:
      if isinstance(var, jax_core.Var):
        readers.setdefault(var, []).append(eqn)
  results = {id(v) for v in jaxpr.outvars if isinstance(v, jax_core.Var)}
  for eqn in jaxpr.eqns:
    name = str(eqn.params.get('name', ''))
    if _is_marker(eqn):
      y = eqn.outvars[0]
      uses = readers.get(y, [])
      ok = bool(uses) and id(y) not in results and all(_is_relu_of(e, y) for e in uses)
      out[name] = out.get(name, True) and ok
      continue
    for value in eqn.params.values():
      for inner in _sub_jaxprs(value):
        _verdicts(inner, out)


def relu_only(fn: Callable, *args) -> Set[Path]:
  """The paths of the sparse layers whose every output in ``fn(*args)`` goes to a ReLU
  and nowhere else (``fn`` calls the sparse model; it is traced, not run)."""
  closed, _, marking = _traced(fn, *args)
  verdicts: Dict[str, bool] = {}
  _verdicts(closed.jaxpr, verdicts)
  passed: Dict[Path, bool] = {}
  for index, (path, _) in enumerate(marking.marks):
    passed[path] = passed.get(path, True) and verdicts.get(marking.name(index), False)
  return {path for path, ok in passed.items() if ok}


def _dropped(jaxpr, fused: Set[str]):
  """``jaxpr`` without the ReLUs (at its top level) that read the output of a marker in
  ``fused``: their results are that output."""
  products: Set[Any] = set()
  same: Dict[Any, Any] = {}
  eqns = []
  for eqn in jaxpr.eqns:
    invars = [same.get(v, v) if isinstance(v, jax_core.Var) else v for v in eqn.invars]
    if _is_marker(eqn) and str(eqn.params['name']) in fused:
      products.add(eqn.outvars[0])
    reads = [v for v in invars if isinstance(v, jax_core.Var) and v in products]
    if len(reads) == 1 and _is_relu_of(eqn.replace(invars=invars), reads[0]):
      same[eqn.outvars[0]] = reads[0]
      continue
    eqns.append(eqn.replace(invars=invars))
  outvars = [same.get(v, v) if isinstance(v, jax_core.Var) else v for v in jaxpr.outvars]
  return jaxpr.replace(eqns=eqns, outvars=outvars)


def without_fused_relus(fn: Callable, *args) -> Tuple[Any, Any]:
  """``fn(*args)`` (a call of the sparse model) traced without the ReLUs that read the
  output of a product that applied its own (module docstring): ``(closed jaxpr, output
  tree)``, which computes what ``fn`` does when evaluated on the leaves of ``args``
  (``jax.core.eval_jaxpr``). Only ReLUs at the model's own level are left out; one inside
  a transform of the model (``nn.scan``, ``nn.remat``, a ``cond``) runs, on an already
  non-negative array.

  Raises:
    ValueError: if the output of a product that applied a ReLU is read by anything but a
      ReLU in this call (a call with other arguments than the export's, which reads the
      layer's output elsewhere).
  """
  closed, shapes, marking = _traced(fn, *args)
  fused = {marking.name(i): path for i, (path, relu) in enumerate(marking.marks) if relu}
  verdicts: Dict[str, bool] = {}
  _verdicts(closed.jaxpr, verdicts)
  wrong = sorted({paths.layer_name(path) for name, path in fused.items()
                  if not verdicts.get(name, True)})
  if wrong:
    raise ValueError(f'pcs: the layers {wrong} were exported with their ReLU in the '
                     'product (fuse_relu), but in this call their output is also read by '
                     'something other than a ReLU; export with the arguments of this call '
                     '(call_kwargs=...), or with fuse_relu=[].')
  if fused:
    closed = closed.replace(jaxpr=_dropped(closed.jaxpr, set(fused)))
  return closed, jax.tree.structure(shapes)


def resolve(fuse_relu: Union[str, Any], detect: Optional[Callable[[], Set[Path]]]) -> Any:
  """The layers whose ReLU the export fuses: :func:`relu_only`'s (``detect()``) for
  ``'auto'`` (none without a model to trace: ``detect`` None), else the paths given.

  ``'auto'`` moves none where the model cannot be traced as exported (a call that writes
  a collection, such as a decoding cache): no result changes.

  Raises:
    ValueError: for a string other than ``'auto'`` (a single path goes in a list), or
      anything else that is not a list of paths.
  """
  if isinstance(fuse_relu, str) and fuse_relu == 'auto':
    if detect is None:
      return ()
    try:
      return sorted(detect(), key=str)
    except Exception:  # pylint: disable=broad-except
      # A call that cannot be traced as exported (it writes a collection, such as a
      # decoding cache, or needs RNGs): no ReLU is moved, which changes no result.
      return ()
  if isinstance(fuse_relu, str) or not isinstance(fuse_relu, (list, tuple, set)):
    hint = f' (for one layer: fuse_relu=[{fuse_relu!r}])' if isinstance(fuse_relu, str) else ''
    raise ValueError(f"`fuse_relu` must be 'auto' or a list of layer paths; got "
                     f'{fuse_relu!r}{hint}.')
  return fuse_relu
