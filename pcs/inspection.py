"""What users log and inspect: alpha_t, a_t, ||x||_1, sparsity, and the latent variables."""

from typing import Any, Union

import jax
import jax.numpy as jnp

from pcs import pilot
from pcs import selection
from pcs import theory
from pcs.mirror import MirrorState
from pcs.reparam import ReparamState

PcsState = Union[ReparamState, MirrorState]


def find_state(opt_state: Any) -> PcsState:
  """The single pcs state inside ``opt_state`` (through chains, inject_hyperparams, MultiSteps).

  Raises:
    ValueError: if ``opt_state`` holds no pcs state or more than one.
  """
  found = [node for node in jax.tree.leaves(
      opt_state, is_leaf=lambda n: isinstance(n, (ReparamState, MirrorState)))
           if isinstance(node, (ReparamState, MirrorState))]
  if len(found) != 1:
    raise ValueError(f'`opt_state` must hold exactly one pcs state; found {len(found)}.')
  return found[0]


def latents(opt_state: Any, params: Any, where: selection.Where = None) -> Any:
  """The latent variables behind ``params``, for inspection.

  For :func:`pcs.pilot` / :func:`pcs.spred`: the params tree with
  ``Factors(m, w)`` at each selected leaf (x = m * w, w = x / m) and None
  elsewhere. For :func:`pcs.mirror`: the dual coordinates
  ``z = 1/2 arcsinh(x / a_t)`` at each selected leaf and None elsewhere.
  Pass the same ``where`` as to the transform.
  """
  state = find_state(opt_state)
  mask = selection.select(params, where)
  if isinstance(state, ReparamState):
    return jax.tree.map(lambda x, u, s: pilot.factors(u, x) if s else None,
                        params, state.latents, mask)
  return jax.tree.map(lambda x, s: theory.mirror_map(x, state.log_a) if s else None,
                      params, mask)


def stats(opt_state: Any, params: Any, where: selection.Where = None) -> dict:
  """Scalars to log each epoch.

  Returns a dict of float32 scalars:
    ``alpha``: alpha_t of the latest step;
    ``a``: a_t, the scale of the potential R_a: ``exp(log_a)`` for mirror, the
      mean of ``(m^2 - w^2) / 2`` over selected weights for pilot/spred (exact
      a_t for SGD, a summary for adaptive optimizers);
    ``l1_norm``: ``||x||_1`` over the leaves selected by ``where``;
    ``sparsity``: fraction of exact zeros among them.
  Pass the same ``where`` as to the transform.
  """
  state = find_state(opt_state)
  mask = selection.select(params, where, check_float=False)
  if isinstance(state, MirrorState):
    a = jnp.exp(state.log_a)
  else:
    def gamma(x, u, s):
      if not s:
        return None
      m, w = (v.astype(jnp.float32) for v in pilot.factors(u, x))
      return jnp.sum(jnp.square(m) - jnp.square(w)), m.size
    parts = jax.tree.leaves(jax.tree.map(gamma, params, state.latents, mask),
                            is_leaf=lambda n: isinstance(n, tuple))
    total = sum(size for _, size in parts)
    a = sum((g for g, _ in parts), jnp.zeros((), jnp.float32)) / (2 * max(total, 1))
  return {
      'alpha': state.alpha_state.alpha,
      'a': a,
      'l1_norm': selection.l1_norm(params, mask),
      'sparsity': selection.sparsity(params, where),
  }
