"""The time-dependent mirror flow behind PILoT: float64 references it is checked against.

Jacobs & Burkholz, "Mask in the Mirror: Implicit Sparsification", ICLR 2025.

Training x = m * w with decay alpha_t is, in continuous time, the mirror flow

    d/dt grad R_{a_t}(x) = -grad f(x),     grad R_a(x) = 1/2 arcsinh(x / a),

with the hyperbolic-entropy potential (summed over coordinates)

    R_a(x) = 1/2 sum_i [ x_i arcsinh(x_i / a) - sqrt(x_i^2 + a^2) ],

and a_t = (m^2 - w^2) / 2 = beta/2 * exp(-4 int_0^t alpha). R_a is ~ ||x||^2 / (4a)
for large a (implicit L2) and ~ 1/2 log(1/a) ||x||_1 for small a (implicit L1).
For an underdetermined least-squares loss, the flow converges to

    x_inf = argmin_{A x = y} R_{a_inf}(x) - c.x,   c = 1/2 arcsinh(x_0 / a_0),

whose KKT point is x = a_inf sinh(2 (c + A^T nu)) with A x = y (:func:`kkt_limit`).
"""

import importlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np



def potential(x: jax.Array, a) -> jax.Array:
  """R_a(x) = 1/2 sum [x arcsinh(x/a) - sqrt(x^2 + a^2)], a > 0.
  Example:
    >>> import jax.numpy as jnp
    >>> from pcs import theory
    >>> round(float(theory.potential(jnp.zeros(3), 2.0)), 3)  # -3 a / 2 at x = 0
    -3.0
  """
  return 0.5 * jnp.sum(x * jnp.arcsinh(x / a) - jnp.hypot(x, a))


def a_schedule(alpha: Callable[[np.ndarray], np.ndarray] | float,
               learning_rate: Callable[[np.ndarray], np.ndarray] | float,
               beta: float, num_steps: int) -> np.ndarray:
  """a_t = beta/2 * exp(-4 sum_{k<t} eta_k alpha_k) for t = 0..num_steps (float64).

  This is how a_t follows alpha and the learning rate eta for plain SGD on
  (m, w) in the small-step limit; :func:`pcs.mirror` uses it exactly.

  Example:
    >>> from pcs import theory
    >>> theory.a_schedule(0.25, 1.0, beta=2.0, num_steps=1).round(4)  # a_1 = e^{-1}
    array([1.    , 0.3679])
  """
  steps = np.arange(num_steps)
  alphas = np.broadcast_to(np.asarray(alpha(steps) if callable(alpha) else alpha,
                                      np.float64), steps.shape)
  etas = np.broadcast_to(np.asarray(learning_rate(steps) if callable(learning_rate)
                                    else learning_rate, np.float64), steps.shape)
  integral = np.concatenate([[0.0], np.cumsum(etas * alphas)])
  return beta / 2 * np.exp(-4 * integral)


def kkt_limit(A: np.ndarray, y: np.ndarray, x0: np.ndarray, a0: float, a_inf: float,
              *, tol: float = 1e-12, max_iter: int = 100) -> np.ndarray:
  """Solves min_{A x = y} R_{a_inf}(x) - c.x, c = 1/2 arcsinh(x0 / a0), in float64.

  The KKT conditions give x(nu) = a_inf sinh(2 (c + A^T nu)) with A x(nu) = y;
  Newton's method on the dual variable nu (dimension n) with a backtracking line
  search on ||A x(nu) - y|| solves them. The Jacobian of A x(nu) is
  A diag(2 a_inf cosh(2 (c + A^T nu))) A^T, positive definite for full-rank A.

  Example:
    >>> import numpy as np
    >>> from pcs import theory
    >>> A, y = np.array([[1.0, 2.0]]), np.array([2.0])
    >>> theory.kkt_limit(A, y, np.zeros(2), a0=0.5, a_inf=1e-6).round(2)  # -> basis pursuit
    array([0., 1.])

  Raises:
    RuntimeError: if Newton does not reach ``tol`` (relative residual).
  """
  A, y, x0 = (np.asarray(v, np.float64) for v in (A, y, x0))
  c = 0.5 * np.arcsinh(x0 / a0)
  nu = np.zeros(A.shape[0])
  scale = max(float(np.linalg.norm(y)), 1e-300)

  def residual(nu):
    return A @ (a_inf * np.sinh(2 * (c + A.T @ nu))) - y

  with np.errstate(over='ignore', invalid='ignore'):  # overflowing trials are rejected
    r = residual(nu)
    for _ in range(max_iter):
      if np.linalg.norm(r) <= tol * scale:
        return a_inf * np.sinh(2 * (c + A.T @ nu))
      weights = 2 * a_inf * np.cosh(2 * (c + A.T @ nu))
      step = np.linalg.solve((A * weights) @ A.T, r)
      t = 1.0
      while True:
        candidate = nu - t * step
        r_new = residual(candidate)
        if np.all(np.isfinite(r_new)) and np.linalg.norm(r_new) < np.linalg.norm(r):
          break
        t /= 2
        if t < 1e-12:
          raise RuntimeError('kkt_limit: line search failed.')
      nu, r = candidate, r_new
  raise RuntimeError(f'kkt_limit: no convergence in {max_iter} Newton steps '
                     f'(relative residual {np.linalg.norm(r) / scale:.2e}).')


def basis_pursuit(A: np.ndarray, y: np.ndarray) -> np.ndarray:
  """min ||x||_1 s.t. A x = y, as the LP over x = u - v, u, v >= 0 (scipy HiGHS).

  scipy (a dependency of jax) is imported here, not with pcs.

  Example:
    >>> import numpy as np
    >>> from pcs import theory
    >>> theory.basis_pursuit(np.array([[1.0, 2.0]]), np.array([2.0])).round(6)
    array([0., 1.])
  """
  optimize = importlib.import_module('scipy.optimize')
  A = np.asarray(A, np.float64)
  _n, d = A.shape
  result = optimize.linprog(
      np.ones(2 * d), A_eq=np.hstack([A, -A]), b_eq=np.asarray(y, np.float64),
      bounds=(0, None), method='highs')
  if result.status != 0:
    raise RuntimeError(f'basis_pursuit: linprog failed: {result.message}')
  return result.x[:d] - result.x[d:]


def min_l2_correction(A: np.ndarray, y: np.ndarray, x0: np.ndarray) -> np.ndarray:
  """argmin_{A x = y} ||x - x0||_2 = x0 + A^+ (y - A x0): the limit for large a.
  Example:
    >>> import numpy as np
    >>> from pcs import theory
    >>> theory.min_l2_correction(np.array([[1.0, 1.0]]), np.array([2.0]), np.zeros(2))
    array([1., 1.])
  """
  A = np.asarray(A, np.float64)
  x0 = np.asarray(x0, np.float64)
  return x0 + np.linalg.lstsq(A, np.asarray(y, np.float64) - A @ x0, rcond=None)[0]
