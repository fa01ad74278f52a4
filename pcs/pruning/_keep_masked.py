"""Fine-tuning with fixed masks: pruned weights stay exactly zero and carry no moments."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pcs.pruning import _masks as pruning
from pcs.core import _reparameterize as reparam
from pcs.core import _boundary as boundary


class KeepMaskedState(NamedTuple):
  """The inner optimizer's state (pruned entries of its params-shaped trees zeroed) and the
  masks, so a checkpoint of the optimizer state holds them and a restored optimizer
  fine-tunes with the same masks."""
  inner_state: optax.OptState
  masks: Any


def zero_pruned(inner: optax.GradientTransformation, inner_state: Any, masks: Any) -> Any:
  """Zeroes the pruned entries of every params-shaped tree in ``inner``'s state.

  The trees are found with ``optax.tree_utils.tree_map_params``, so this reaches
  momentum traces, Adam's moments and the latents of a pcs inner (pilot's m, STR's
  w) whatever wrappers they sit in. Leaves whose shape is not the weight's (a
  per-layer scalar such as STR's threshold) are left as they are.
  """
  def zero(value, mask):
    if reparam.is_hole(value) or jnp.shape(value) != jnp.shape(mask):
      return value
    return jnp.where(mask, value, jnp.zeros_like(value))

  return optax.tree_utils.tree_map_params(inner, zero, inner_state, masks,
                                          is_leaf=reparam.is_hole)


def masked_step(inner, updates, inner_state, params, masks, extra_args):
  """Runs ``inner`` on masked gradients, zeroes pruned entries of its state, and
  returns the updates that leave pruned weights exactly zero (``-x`` there)."""
  grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), updates, masks)
  inner_updates, inner_state = inner.update(grads, inner_state, params, **extra_args)
  inner_updates = jax.tree.map(
      lambda du, x, m: jnp.where(m, du, -x.astype(du.dtype)), inner_updates, params, masks)
  return inner_updates, zero_pruned(inner, inner_state, masks)


def keep_masked(inner: optax.GradientTransformation, masks: Any
                ) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so that weights where ``masks`` is False stay exactly zero.

  For pruned entries the gradient fed to ``inner`` is zero, every params-shaped
  tree of its state is zeroed there (:func:`zero_pruned`: momentum, Adam's
  moments, and a pcs inner's latents and their moments), and the emitted update is
  ``-x``, so ``apply_updates`` gives exact zeros even if the weight was not yet
  zero. Use it to fine-tune after :func:`pcs.prune`.

  Example:
    >>> import jax.numpy as jnp, optax, pcs
    >>> params, masks = pcs.prune({'w': jnp.array([[0.1, -2.0], [3.0, 0.2]])}, 0.5)
    >>> tx = pcs.keep_masked(optax.sgd(0.1, momentum=0.9), masks)
    >>> updates, _ = tx.update({'w': jnp.ones((2, 2))}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)['w']
    Array([[ 0. , -2.1],
           [ 2.9,  0. ]], dtype=float32)

  Args:
    inner: any optax optimizer (including a pcs transform).
    masks: bool pytree with the structure and shapes of the params (True = kept), pure
      or an NNX ``State`` as ``pcs.prune(nnx.state(model, nnx.Param), s)`` returns it.
      They are stored in the state (:class:`KeepMaskedState`): the state's masks are the
      ones used at every update, so an optimizer restored from a checkpoint fine-tunes
      with the masks it was saved with.
  """
  inner = boundary.inner_optimizer(inner, 'keep_masked')
  masks = boundary.plain(masks)

  def init_fn(params):
    if jax.tree.leaves(params):  # (tree_map_params calls init with a leafless placeholder)
      pruning.check_masks(params, masks)
    # A copy: a train step that donates its state must not delete the caller's masks.
    return KeepMaskedState(inner.init(params), jax.tree.map(jnp.copy, masks))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(reparam.NO_PARAMS_MSG.format(name='keep_masked'))
    pruning.check_masks(params, state.masks)
    out, inner_state = masked_step(inner, updates, state.inner_state, params, state.masks,
                                   extra_args)
    return out, KeepMaskedState(inner_state, state.masks)

  return boundary.transform(init_fn, update_fn)
