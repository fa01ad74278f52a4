"""What users log and inspect: every pcs state's own scalars, ||x||_1, sparsity, and latents.

Each pcs state type owns its accessors (``stats(params, where)``, and for methods
with latent variables ``latents(params, where)``), next to the transform that
makes it. The functions here find those states wherever they sit in an optax
composition (chain, masked, multi_transform, inject_hyperparams, MultiSteps,
apply_if_finite, and one pcs transform inside another) and call them. Without a
``where``, each state reports over the leaves its transform acts on, which it
recorded at init (``state.selected``, see :func:`pcs.core._selection.record`).
"""

from typing import Any, List

import jax
import jax.numpy as jnp

from pcs.core import _selection as selection
from pcs.core import _boundary as boundary


def _is_pcs_state(node: Any) -> bool:
  return isinstance(node, tuple) and hasattr(type(node), 'stats') and hasattr(node, '_fields')


def find_states(opt_state: Any) -> List[Any]:
  """Every pcs state inside ``opt_state``, outermost first (a pcs state inside
  another, e.g. ``pcs.gmp(pcs.pilot(...))``, is found too).
  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> tx = optax.chain(optax.clip(1.0), pcs.gmp(pcs.pilot(optax.sgd(0.1)), final_sparsity=0.5,
    ...                                         begin_step=0, end_step=10))
    >>> [type(s).__name__ for s in pcs.find_states(tx.init({'w': jnp.ones((2, 2))}))]
    ['ScheduledPruningState', 'ReparamState']
  """
  opt_state = boundary.plain(opt_state)
  found = []
  for node in jax.tree.leaves(opt_state, is_leaf=_is_pcs_state):
    if _is_pcs_state(node):
      found.append(node)
      found.extend(find_states(getattr(node, 'inner_state', None)))
  return found


def find_state(opt_state: Any) -> Any:
  """The single pcs state with latent variables (pilot, spred, mirror, STR, CS,
  PowerProp, or a :func:`pcs.reparameterize` method) inside ``opt_state``.

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> state = optax.apply_if_finite(pcs.pilot(optax.sgd(0.1)), 3).init({'w': jnp.ones((2, 2))})
    >>> type(pcs.find_state(state)).__name__
    'ReparamState'

  Raises:
    ValueError: if ``opt_state`` holds no such state or more than one.
  """
  found = [s for s in find_states(opt_state) if hasattr(type(s), 'latents')]
  if len(found) != 1:
    raise ValueError('`opt_state` must hold exactly one pcs state with latent variables '
                     '(pilot, spred, mirror, soft_threshold, continuous_sparsification, '
                     f'powerprop or reparameterize); found {len(found)}.')
  return found[0]


def own_where(state: Any, params: Any, where: selection.Where) -> selection.Where:
  """``where`` if given, else the selection ``state`` recorded at init, as a bool tree."""
  if where is not None:
    return where
  return selection.recorded(state.selected, params)


def latents(opt_state: Any, params: Any, where: selection.Where = None) -> Any:
  """The latent variables behind ``params``, for inspection.

  A NamedTuple of params-shaped trees with ``optax.MaskedNode()`` at the leaves the
  method does not act on: ``Factors(m, w)`` for :func:`pcs.pilot` / :func:`pcs.spred`
  (x = m * w), ``ThresholdLatent(w, s)`` for STR, ``MaskLatent(w, s)`` for CS,
  ``PowerLatent(w)`` for PowerProp; for :func:`pcs.mirror` the tree of dual
  coordinates ``z = 1/2 arcsinh(x / a_t)``. ``where`` defaults to the transform's
  own (recorded in its state at init).

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> params = {'w': jnp.array([[2.0, -0.5]]), 'b': jnp.zeros(2)}
    >>> factors = pcs.latents(pcs.pilot(optax.sgd(0.1)).init(params), params)
    >>> (factors.m['w'] * factors.w['w']).tolist(), factors.m['b']
    ([[2.0, -0.5]], MaskedNode())
  """
  opt_state, params = boundary.plain(opt_state), boundary.plain(params)
  state = find_state(opt_state)
  return state.latents(params, own_where(state, params, where))


def stats(opt_state: Any, params: Any, where: selection.Where = None) -> dict:
  """Scalars to log each epoch, for any pcs transform or composition of them.

  Always :func:`weight_stats` over the leaves selected by ``where`` (default: the
  leaves the pcs transforms in ``opt_state`` act on, as each recorded at init; with
  several, every leaf one of them acts on): ``l1_norm``, ``sparsity``, the fractions
  of small weights and quantiles of ``|x|``. Then each pcs state's own, over its own
  leaves unless ``where`` is given:

  * pilot / spred / mirror: ``alpha`` (alpha_t of the latest step) and ``a`` (a_t:
    ``exp(log_a)`` for mirror; the mean of (m^2 - w^2) / 2 for pilot, exact for
    SGD; 0 for spred);
  * soft_threshold: ``alpha`` (its weight decay) and ``threshold/<layer>``;
  * continuous_sparsification: ``alpha``, ``temperature`` and ``mask_density``;
  * powerprop: ``alpha`` (its weight decay);
  * l1: ``threshold`` (eta_t * lambda);
  * gmp / magnitude: ``target_sparsity`` (scheduled) and ``mask_sparsity``.

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> params = {'w': jnp.array([[0.0, -2.0]])}
    >>> logged = pcs.stats(pcs.pilot(optax.sgd(0.1), alpha=1e-3).init(params), params)
    >>> {k: round(float(v), 3) for k, v in logged.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'l1_norm': 2.0, 'sparsity': 0.5, 'small_1e-3': 0.5, 'small_1e-6': 0.5,
     'abs_q10': 0.2, 'abs_q50': 1.0, 'abs_q90': 1.8, 'alpha': 0.001, 'a': 0.5}

  Returns:
    A dict of float32 scalars.

  Raises:
    ValueError: if ``opt_state`` holds no pcs state, or two report the same key.
  """
  opt_state, params = boundary.plain(opt_state), boundary.plain(params)
  states = find_states(opt_state)
  if not states:
    raise ValueError('`opt_state` holds no pcs state: pass the state of a pcs transform '
                     '(or of an optax composition that contains one); for a plain optax '
                     'optimizer use pcs.weight_stats(params).')
  own = [own_where(state, params, where) for state in states]
  acted_on = where if where is not None else jax.tree.map(lambda *s: any(s), *own)
  out = weight_stats(params, acted_on)
  for state, state_where in zip(states, own):
    for key, value in state.stats(params, state_where).items():
      if key in out:
        raise ValueError(f'Two pcs states in `opt_state` report {key!r}; inspect them '
                         'separately with pcs.find_states.')
      out[key] = jnp.asarray(value, jnp.float32)
  return out


QUANTILES = (0.1, 0.5, 0.9)


def weight_stats(params: Any, where: selection.Where = None) -> dict:
  """How sparse and how compressible the selected weights are, under any optimizer.

  ``l1_norm`` = ||x||_1 and ``sparsity`` (the fraction of exact zeros) over the leaves
  selected by ``where`` (default :func:`pcs.kernels`); ``small_1e-3`` / ``small_1e-6``, the
  fractions with ``|x|`` below 1e-3 and 1e-6 (compressible is not sparse: only exact zeros
  count as sparsity); and ``abs_q10`` / ``abs_q50`` / ``abs_q90``, the 10/50/90%
  quantiles of ``|x|`` (a sort of all selected weights: meant for logging once per epoch).

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> logged = pcs.weight_stats({'w': jnp.array([[0.0, 1e-4, 2.0, -3.0, 5.0]])})
    >>> {k: round(float(v), 4) for k, v in logged.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'l1_norm': 10.0001, 'sparsity': 0.2, 'small_1e-3': 0.4, 'small_1e-6': 0.2,
     'abs_q10': 0.0, 'abs_q50': 2.0, 'abs_q90': 4.2}

  Returns:
    A dict of float32 scalars.
  """
  params = boundary.plain(params)
  mask = selection.select(params, where, check_float=False)
  chosen = [jnp.ravel(jnp.abs(x)).astype(jnp.float32)
            for _, x in selection.selected_leaves(params, mask)]
  magnitudes = jnp.concatenate(chosen) if chosen else jnp.zeros((1,), jnp.float32)
  out = {'l1_norm': selection.l1_norm(params, mask),
         'sparsity': selection.sparsity(params, where),
         'small_1e-3': jnp.mean(magnitudes < 1e-3, dtype=jnp.float32),
         'small_1e-6': jnp.mean(magnitudes < 1e-6, dtype=jnp.float32)}
  for q, value in zip(QUANTILES, jnp.quantile(magnitudes, jnp.asarray(QUANTILES))):
    out[f'abs_q{round(100 * q)}'] = value
  return out
