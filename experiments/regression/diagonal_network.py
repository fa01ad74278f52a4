"""The diagonal-linear-network problem of the paper's Section 5.1, shared by the
regression experiment and the dynamics tests (this module is not a binary).

Least squares f(x) = ||A x - y||^2 / (2n) with n < d, a k-sparse truth x* and
inits x_init ~ N(0, I / sqrt(d)), trained full-batch by any optax transformation.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class Problem(NamedTuple):
  A: np.ndarray        # (n, d), standard normal
  y: np.ndarray        # (n,) = A x*
  x_star: np.ndarray   # (d,), k-sparse
  x_inits: np.ndarray  # (num_inits, d), N(0, I / sqrt(d))


def make_problem(seed: int, n: int = 40, d: int = 100, k: int = 5,
                 num_inits: int = 5) -> Problem:
  """A random underdetermined sparse-recovery problem (paper Section 5.1)."""
  rng = np.random.default_rng(seed)
  A = rng.normal(size=(n, d))
  x_star = np.zeros(d)
  support = rng.choice(d, k, replace=False)
  x_star[support] = rng.normal(size=k) + np.sign(rng.normal(size=k))
  x_inits = rng.normal(size=(num_inits, d)) * d**-0.25
  return Problem(A, A @ x_star, x_star, x_inits)


def train(tx: optax.GradientTransformation, A, y, x_init, num_steps: int,
          record_every: int):
  """Full-batch training of f(x) = ||Ax - y||^2 / (2n), one jitted scan.

  Returns the final x and the iterates every ``record_every`` steps, shaped
  (num_steps // record_every, d). Vectorise over inits with ``jax.vmap``.
  """
  A = jnp.asarray(A, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  grad_f = jax.grad(lambda x: 0.5 * jnp.sum(jnp.square(A @ x - y)) / A.shape[0])

  def step(carry, _):
    x, state = carry
    updates, state = tx.update(grad_f(x), state, x)
    return (optax.apply_updates(x, updates), state), None

  def chunk(carry, _):
    carry, _ = jax.lax.scan(step, carry, None, length=record_every)
    return carry, carry[0]

  x = jnp.asarray(x_init, jnp.float32)
  (x, _), trajectory = jax.lax.scan(chunk, (x, tx.init(x)), None,
                                    length=num_steps // record_every)
  return x, trajectory
