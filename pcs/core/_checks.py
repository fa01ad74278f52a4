"""Argument checks shared by every transform: concrete values are checked, traced ones pass.

Hyperparameters may arrive traced (``optax.inject_hyperparams`` under ``jax.jit``);
those cannot be inspected, so they are checked where they are concrete (eagerly, or
when the transform is built with Python numbers) and pass through under a trace.
"""

import numbers
from typing import Any

import jax
import jax.numpy as jnp


def _concrete(name: str, value: Any) -> Any:
  """A Python scalar for a concrete array, the value itself otherwise."""
  if isinstance(value, jax.Array) or hasattr(value, 'dtype'):
    if jnp.ndim(value) != 0:
      raise ValueError(f'`{name}` must be a scalar; got shape {jnp.shape(value)}.')
    return value.item()
  return value


def is_real(value: Any) -> bool:
  """True for a real number that is not a bool."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_scalar(name: str, value: Any, *, minimum: float) -> None:
  """Raises ValueError unless a concrete ``value`` is a finite real >= ``minimum``."""
  if isinstance(value, jax.core.Tracer):
    return
  value = _concrete(name, value)
  if not is_real(value) or not (minimum <= value < float('inf')):
    raise ValueError(f'`{name}` must be a finite number >= {minimum}; got {value!r}.')


def check_integer(name: str, value: Any, *, minimum: int) -> None:
  """Raises ValueError unless a concrete ``value`` is an integer (not a bool) >= ``minimum``."""
  if isinstance(value, jax.core.Tracer):
    return
  concrete = _concrete(name, value)
  if (not isinstance(concrete, numbers.Integral) or isinstance(concrete, bool)
      or concrete < minimum):
    raise ValueError(f'`{name}` must be an integer >= {minimum}; got {value!r}.')
