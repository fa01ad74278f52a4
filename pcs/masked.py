"""Fine-tuning with fixed masks: pruned weights stay exactly zero and carry no moments."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pcs import pruning
from pcs import reparam


class KeepMaskedState(NamedTuple):
  inner_state: optax.OptState


def zero_masked(tree: Any, masks: Any) -> Any:
  """Zeroes masked entries in every subtree of ``tree`` shaped like ``masks``.

  This reaches the per-parameter buffers of any optax state (momentum traces,
  Adam's moments), whatever wrappers they sit in.
  """
  masks_def = jax.tree.structure(masks)
  shapes = [jnp.shape(m) for m in jax.tree.leaves(masks)]

  def shaped_like_masks(node) -> bool:
    return (jax.tree.structure(node) == masks_def and
            [jnp.shape(x) for x in jax.tree.leaves(node)] == shapes)

  def apply(node):
    if not shaped_like_masks(node):
      return node
    return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), node, masks)

  return jax.tree.map(apply, tree, is_leaf=shaped_like_masks)


def masked_step(inner, updates, inner_state, params, masks, extra_args):
  """Runs ``inner`` on masked gradients, zeroes masked moments, and returns the
  updates that leave pruned weights exactly zero (``-x`` there) with the new state."""
  grads = zero_masked(updates, masks)
  inner_updates, inner_state = inner.update(grads, inner_state, params, **extra_args)
  inner_updates = jax.tree.map(
      lambda du, x, m: jnp.where(m, du, -x.astype(du.dtype)), inner_updates, params, masks)
  return inner_updates, zero_masked(inner_state, masks)


def keep_masked(inner: optax.GradientTransformation, masks: Any
                ) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so that weights where ``masks`` is False stay exactly zero.

  For pruned entries the gradient fed to ``inner`` is zero, the optimizer's
  per-parameter buffers (any subtree of its state shaped like the params) are
  zeroed, and the emitted update is ``-x``, so ``apply_updates`` gives exact zeros
  even if the weight was not yet zero. Use it to fine-tune after :func:`pcs.prune`.

  Args:
    inner: any optax optimizer (including a pcs transform).
    masks: bool pytree with the structure and shapes of the params (True = kept).
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    pruning.check_masks(params, masks)
    return KeepMaskedState(zero_masked(inner.init(params), masks))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(reparam.NO_PARAMS_MSG.format(name='keep_masked'))
    pruning.check_masks(params, masks)
    out, inner_state = masked_step(inner, updates, state.inner_state, params, masks, extra_args)
    return out, KeepMaskedState(inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
