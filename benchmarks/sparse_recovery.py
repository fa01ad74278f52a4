"""Sparse recovery at scale: pcs as a basis-pursuit solver against LP, LASSO and FISTA.

The problem (compressed sensing; Candes & Tao 2005, Donoho 2006): recover a k-sparse
x* in R^d from b = A x*, n = d/4 measurements, k = n/10. At this undersampling
(n/d = 1/4, k/n = 0.1, well inside the Donoho & Tanner 2009 phase transition) basis
pursuit, min ||x||_1 s.t. A x = b, has x* as its unique solution, so "reaching the
basis-pursuit solution" means relative error ||x - x*|| / ||x*|| <= 1e-3 with the same
support (entries above 1e-3 max|x*| exactly where x* is non-zero). A is Gaussian
N(0, 1/n) up to d = 1e4 and a sparse sensing matrix beyond (s = 8 entries +-1/sqrt(s)
per column, Berinde et al. 2008), stored as scipy CSR / jax BCOO.

Solvers, each run as its users would run it:
  pcs pilot   GD on x = m * w (``pcs.pilot`` around Nesterov SGD) with the Lasso
              continuation below as its decay alpha_t;
  pcs mirror  the same as mirror descent on x (``pcs.mirror``);
  FISTA       accelerated proximal gradient (Beck & Teboulle 2009) with adaptive restart
              (O'Donoghue & Candes 2015) and the same continuation, in jax;
  HiGHS       the LP min 1'(u + v) s.t. A (u - v) = b, u, v >= 0 (scipy.optimize.linprog,
              simplex and interior point);
  Lasso CD path, LassoLars   scikit-learn down to the tiny penalty lambda_min = 1e-5 lambda_max
              (coordinate descent warm-started along the path, and the LARS homotopy).

Why pcs is an L1 solver at all: with decay alpha the flow of x = m * w is
``dx/dt = -sqrt(gamma^2 + 4 x^2) grad f(x) - 4 alpha x`` with gamma = m^2 - w^2 -> 0, whose
fixed points satisfy the Lasso optimality condition grad f(x) = -2 alpha sign(x)
(Jacobs & Burkholz, ICLR 2025): alpha_t = lambda_t / 2 follows the Lasso path, and
lambda -> 0 with the support fixed is basis pursuit. (``pcs.mirror`` decays a_t outside
the inner optimizer, so with momentum mu its path is lambda_t = 2 alpha_t (1 - mu).) The
recommended solver settings, the fastest that solved all of 20 tuning instances (d = 400 and
1000, dense and sparse, seeds 1-5; the benchmark uses seed 0), used unchanged at every d:

  L = ||A||_2^2 (power iteration),  lambda_max = ||A' b||_inf,
  lambda_t = lambda_max max(1e-5, r^t), r = 0.97 (pilot), 0.985 (mirror); alpha_t = lambda_t / 2,
  pcs: inner = optax.sgd(1 / L, momentum=0.95, nesterov=True), beta = 1,
  FISTA: step 1 / L, lambda_t = lambda_max max(1e-5, 0.9^t).

The iterative solvers run in one jitted ``lax.while_loop`` that tests the success
criterion every iteration (an oracle stop: a deployment would test ||A x - b||), so
their time is the time to reach the solution; HiGHS and scikit-learn run to their
own tolerances, in a forked child process stopped after TIME_CAP_S, and their final
answer is checked. Memory is the peak resident memory a solve adds (Linux VmHWM), with
the inputs already loaded and the jax programs already compiled.

  python -m benchmarks.sparse_recovery [--recovery_repeats=3] [--recovery_dims=1000,10000,100000]
"""

import dataclasses
import multiprocessing
import statistics
import time
from typing import Callable, NamedTuple, Optional
import warnings

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import sparse as jsparse
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
import scipy.sparse
from sklearn import linear_model

import pcs

flags.DEFINE_integer('recovery_repeats', 3, 'Timed solves per solver at d <= 1e4 (1 above).')
flags.DEFINE_list('recovery_dims', ['1000', '10000', '100000'], 'Problem sizes d.')
FLAGS = flags.FLAGS

TOLERANCE = 1e-3
DENSE_UP_TO = 10_000
NONZEROS_PER_COLUMN = 8
TIME_CAP_S = 120.0
MAX_ITERATIONS = 20_000
LAMBDA_FLOOR = 1e-5
RECOMMENDED_DECAY = {'pilot': 0.97, 'mirror': 0.985}


SUMMARY = f"""Recover a k-sparse x* from b = A x* (n = d/4, k = n/10; Gaussian A up to d = 1e4,
8 non-zeros per column above), the basis-pursuit solution, to relative error 1e-3 with the
same support. pcs runs GD on x = m * w (pilot) or mirror descent (mirror) with Nesterov
momentum and the decay alpha_t = lambda_t / 2 following a Lasso continuation lambda_t =
lambda_max max(1e-5, r^t); FISTA (jax, adaptive restart) follows its own continuation
(0.9^t); both stop, inside one jitted loop, at the first iterate that meets the criterion.
HiGHS (LP on [A, -A]) and scikit-learn (warm-started coordinate descent along 20 penalties
down to 1e-5 lambda_max; LARS) run to their own tolerances in a child process stopped after
{TIME_CAP_S:.0f} s. Settings were tuned on other instances (see the module docstring). Memory:
peak resident memory added by the solve. float32 for the jax solvers, float64 otherwise;
the child's copy-on-write start adds a few ms to the CPU solvers at d = 1e3.

Why: every jax iteration costs two products with A (pcs's iterations are the cheaper
ones); FISTA needs about 80 of them at every d, pcs 300-380, so FISTA wins on iteration
count. LARS and warm-started coordinate descent are homotopy methods: LARS is exact and
quick while k is small but needs a dense A; coordinate descent's epochs are cheap on a
sparse A (8 entries per column), which puts it second at d = 1e5. The LP doubles the
variables and, with a dense A, hands HiGHS 2 n d non-zeros: it is the only exact method
here, and neither simplex nor interior point finished within the limit from d = 1e4."""


@dataclasses.dataclass
class Problem:
  """b = A x*; A is a dense ndarray or a scipy CSR matrix, float64."""
  A: object
  b: np.ndarray
  x_star: np.ndarray

  @property
  def dense(self) -> bool:
    return isinstance(self.A, np.ndarray)


def _distinct_rows(rng, n: int, d: int) -> np.ndarray:
  """(d, s) row indices, s = NONZEROS_PER_COLUMN distinct ones per column (redrawn on clashes)."""
  rows = rng.integers(0, n, (d, NONZEROS_PER_COLUMN))
  while True:
    ordered = np.sort(rows, axis=1)
    clash = np.any(ordered[:, 1:] == ordered[:, :-1], axis=1)
    if not clash.any():
      return rows
    rows[clash] = rng.integers(0, n, (int(clash.sum()), NONZEROS_PER_COLUMN))


def make_problem(d: int, seed: int = 0) -> Problem:
  """A random instance with n = d/4, k = n/10, |x*_i| in [1, 2] with random signs."""
  n, k = d // 4, d // 40
  rng = np.random.default_rng(seed)
  if d <= DENSE_UP_TO:
    A = rng.normal(size=(n, d)) / np.sqrt(n)
  else:
    rows = _distinct_rows(rng, n, d)
    values = rng.choice([-1.0, 1.0], rows.shape) / np.sqrt(NONZEROS_PER_COLUMN)
    cols = np.repeat(np.arange(d), NONZEROS_PER_COLUMN)
    A = scipy.sparse.csr_matrix((values.ravel(), (rows.ravel(), cols)), shape=(n, d))
  x_star = np.zeros(d)
  support = rng.choice(d, k, replace=False)
  x_star[support] = rng.choice([-1.0, 1.0], k) * rng.uniform(1.0, 2.0, k)
  return Problem(A, A @ x_star, x_star)


def check(x, x_star) -> tuple:
  """(relative error, same support) of a candidate x against x*."""
  x, x_star = np.asarray(x, np.float64), np.asarray(x_star, np.float64)
  error = np.linalg.norm(x - x_star) / np.linalg.norm(x_star)
  same = np.array_equal(np.abs(x) > TOLERANCE * np.abs(x_star).max(), x_star != 0)
  return float(error), bool(same)


def _recovered(x, x_star, threshold):
  error = jnp.linalg.norm(x - x_star) / jnp.linalg.norm(x_star)
  return (error <= TOLERANCE) & jnp.all((jnp.abs(x) > threshold) == (x_star != 0))


# ---- jax solvers: one compiled while loop each --------------------------------------


def _operator(problem: Problem):
  """(A, A') as jax float32 operators: dense arrays or BCOO matrices."""
  if problem.dense:
    A = jnp.asarray(problem.A, jnp.float32)
    return A, A.T
  A = jsparse.BCOO.from_scipy_sparse(problem.A.astype(np.float32))
  At = jsparse.BCOO.from_scipy_sparse(problem.A.T.tocsr().astype(np.float32))
  return A, At


def _lipschitz(A, At, d, iterations=50):
  """||A||_2^2 by power iteration on A'A, with 5% headroom (it converges from below)."""
  def body(_, v):
    u = At @ (A @ v)
    return u / jnp.linalg.norm(u)
  v = jax.lax.fori_loop(0, iterations, body, jnp.ones(d, jnp.float32) / np.sqrt(d))
  return 1.05 * jnp.linalg.norm(At @ (A @ v))


def _scales(A, At, b):
  """(L, lambda_max) = (||A||_2^2, ||A' b||_inf): the step 1 / L and the top of the Lasso path."""
  return _lipschitz(A, At, At.shape[0]), jnp.max(jnp.abs(At @ b))


def _until_recovered(step, carry, x_star):
  """Iterates ``carry = (i, x, ...) -> step(carry)`` in one while loop until x meets the
  success criterion or i reaches MAX_ITERATIONS; returns (x, i)."""
  threshold = TOLERANCE * jnp.max(jnp.abs(x_star))

  def running(carry):
    i, x = carry[:2]
    return (i < MAX_ITERATIONS) & ~_recovered(x, x_star, threshold)

  i, x = jax.lax.while_loop(running, step, carry)[:2]
  return x, i


def _pcs_solver(kind: str, start=1.0, decay=None, momentum=0.95):
  """pcs.pilot or pcs.mirror; the defaults are the recommended settings (module docstring)."""
  def solve(A, At, b, x_star):
    lipschitz, lambda_max = _scales(A, At, b)
    rate = RECOMMENDED_DECAY[kind] if decay is None else decay
    alpha = lambda t: 0.5 * lambda_max * jnp.maximum(LAMBDA_FLOOR, start * rate**t)
    inner = optax.sgd(1.0 / lipschitz, momentum=momentum, nesterov=True)
    every_leaf = lambda path, leaf: True
    if kind == 'pilot':
      tx = pcs.pilot(inner, alpha=alpha, beta=1.0, where=every_leaf)
    else:
      tx = pcs.mirror(inner, alpha=alpha, beta=1.0, where=every_leaf,
                      learning_rate=1.0 / lipschitz)

    def step(carry):
      i, x, state = carry
      g = At @ (A @ x - b)
      updates, state = tx.update(g, state, x)
      return i + 1, optax.apply_updates(x, updates), state

    x0 = jnp.zeros(At.shape[0], jnp.float32)
    return _until_recovered(step, (0, x0, tx.init(x0)), x_star)
  return solve


def _fista_solver(decay=0.9):
  """FISTA with the continuation lambda_t = lambda_max max(1e-5, decay^t)."""
  return lambda A, At, b, x_star: _fista(A, At, b, x_star, decay)


def _fista(A, At, b, x_star, decay):
  """FISTA with gradient restart on 1/2 ||A x - b||^2 + lambda_t ||x||_1.

  y = x_t + (theta_t - 1) / theta_{t+1} (x_t - x_{t-1}),
  x_{t+1} = S_{lambda_t / L}(y - A'(A y - b) / L),
  theta_{t+1} = (1 + sqrt(1 + 4 theta_t^2)) / 2, reset to 1 when (y - x_{t+1})'(x_{t+1} - x_t) > 0.
  """
  lipschitz, lambda_max = _scales(A, At, b)

  def step(carry):
    i, x, x_prev, theta = carry
    theta_next = (1 + jnp.sqrt(1 + 4 * theta**2)) / 2
    y = x + (theta - 1) / theta_next * (x - x_prev)
    v = y - (At @ (A @ y - b)) / lipschitz
    shrink = lambda_max * jnp.maximum(LAMBDA_FLOOR, decay**i) / lipschitz
    x_next = jnp.sign(v) * jnp.maximum(jnp.abs(v) - shrink, 0)
    restart = jnp.vdot(y - x_next, x_next - x) > 0
    return i + 1, x_next, x, jnp.where(restart, 1.0, theta_next)

  x0 = jnp.zeros(At.shape[0], jnp.float32)
  return _until_recovered(step, (0, x0, x0, jnp.float32(1.0)), x_star)


def _jax_solver(solve: Callable):
  """Compiles ``solve`` for a problem; returns a call that runs it on device."""
  def prepare(problem: Problem):
    A, At = _operator(problem)
    args = (A, At, jnp.asarray(problem.b, jnp.float32), jnp.asarray(problem.x_star, jnp.float32))
    compiled = jax.jit(solve).lower(*args).compile()

    def run():
      x, iterations = jax.block_until_ready(compiled(*args))
      return np.asarray(x), int(iterations)
    return run
  return prepare


# ---- reference solvers ---------------------------------------------------------------


def _highs(method: str):
  def prepare(problem: Problem):
    A = scipy.sparse.csr_matrix(problem.A)
    d = A.shape[1]

    def run():
      result = scipy.optimize.linprog(
          np.ones(2 * d), A_eq=scipy.sparse.hstack([A, -A], format='csr'), b_eq=problem.b,
          bounds=(0, None), method=method)
      return result.x[:d] - result.x[d:], result.nit
    return run
  return prepare


def _lasso_path(problem: Problem):
  """Coordinate descent warm-started along 20 penalties from lambda_max to lambda_min.

  scikit-learn's own advice for small penalties: a cold start at lambda_min alone did
  not converge in 20000 epochs even at d = 1e3.
  """
  A = problem.A if problem.dense else problem.A.tocsc()
  n = A.shape[0]

  def run():
    lambda_max = np.max(np.abs(A.T @ problem.b))
    penalties = lambda_max * np.geomspace(1.0, LAMBDA_FLOOR, 20) / n
    _, coefs, _, iterations = linear_model.lasso_path(
        A, problem.b, alphas=penalties, tol=1e-8, max_iter=MAX_ITERATIONS, return_n_iter=True)
    return coefs[:, -1], int(np.sum(iterations))
  return run


def _lasso_lars(problem: Problem):
  """LARS homotopy (Efron et al. 2004) down to lambda_min; dense matrices only."""
  if not problem.dense:
    return None
  n = problem.A.shape[0]

  def run():
    lambda_min = LAMBDA_FLOOR * np.max(np.abs(problem.A.T @ problem.b))
    model = linear_model.LassoLars(lambda_min / n, fit_intercept=False,
                                   max_iter=MAX_ITERATIONS).fit(problem.A, problem.b)
    return model.coef_, int(model.n_iter_)
  return run


class Solver(NamedTuple):
  """``prepare(problem)`` returns ``run() -> (x, iterations)``, or None where not applicable."""
  prepare: Callable
  on_host: bool  # a CPU library: run in a forked child, stopped at TIME_CAP_S


SOLVERS = {
    'pcs pilot': Solver(_jax_solver(_pcs_solver('pilot')), on_host=False),
    'pcs mirror': Solver(_jax_solver(_pcs_solver('mirror')), on_host=False),
    'FISTA (jax)': Solver(_jax_solver(_fista_solver()), on_host=False),
    'HiGHS simplex': Solver(_highs('highs-ds'), on_host=True),
    'HiGHS IPM': Solver(_highs('highs-ipm'), on_host=True),
    'Lasso CD path': Solver(_lasso_path, on_host=True),
    'LassoLars': Solver(_lasso_lars, on_host=True),
}


# ---- measurement ---------------------------------------------------------------------


def _status_kib(field: str) -> int:
  with open('/proc/self/status') as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))


def _solve_with_peak_memory(run):
  """(x, iterations, seconds, bytes): the solve, timed, and the resident memory it added.

  Linux only: VmHWM is reset to the current resident size before the solve
  (/proc/self/clear_refs), so VmHWM - VmRSS_before is the solve's own peak.
  """
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
  before = _status_kib('VmRSS')
  start = time.perf_counter()
  x, iterations = run()
  seconds = time.perf_counter() - start
  return x, iterations, seconds, (_status_kib('VmHWM') - before) * 1024


def _solve_in_child(run):
  """``_solve_with_peak_memory(run)`` in a forked child, killed at TIME_CAP_S (then None).

  The child inherits the prepared problem and runs only scipy / scikit-learn code. A
  child that dies without an answer (an exception, the OOM killer) raises RuntimeError
  instead of passing for a slow solve.
  """
  context = multiprocessing.get_context('fork')
  receive, send = context.Pipe(duplex=False)
  with warnings.catch_warnings():  # jax warns on any fork; the child never calls jax
    warnings.filterwarnings('ignore', message='os.fork', category=RuntimeWarning)
    process = context.Process(target=lambda: send.send(_solve_with_peak_memory(run)))
    process.start()
  deadline = time.monotonic() + TIME_CAP_S
  while not receive.poll(0.1) and process.is_alive() and time.monotonic() < deadline:
    pass
  result = receive.recv() if receive.poll() else None
  process.kill()
  process.join()
  if result is None and time.monotonic() < deadline:
    raise RuntimeError(f'a CPU solver died in its child process (exit code {process.exitcode}) '
                       'before returning; run it in-process to see why.')
  return result


def measure(d: int, repeats: int) -> list:
  """Rows for one size: the solvers timed interleaved, medians of ``repeats`` solves."""
  problem = make_problem(d)
  runs = {name: solver.prepare(problem) for name, solver in SOLVERS.items()}
  times = {name: [] for name in runs}
  results = {}
  for _ in range(repeats):
    for name, run in runs.items():
      if run is None or (times[name] and times[name][-1] > TIME_CAP_S / 10):
        continue  # not applicable, or one solve that slow is measurement enough
      if SOLVERS[name].on_host:
        outcome = _solve_in_child(run)
      else:
        outcome = _solve_with_peak_memory(run)
      if outcome is None:
        times[name].append(TIME_CAP_S)
        logging.info('d=%d %s: stopped at %.0f s', d, name, TIME_CAP_S)
        continue
      x, iterations, seconds, memory = outcome
      times[name].append(seconds)
      results[name] = (x, iterations, max(memory, results.get(name, (0, 0, 0))[2]))
      logging.info('d=%d %s: %.3g s, %d iterations', d, name, seconds, iterations)
  rows = []
  for name, run in runs.items():
    row = {'d': d, 'n': d // 4, 'k': d // 40, 'solver': name, 'dense': problem.dense,
           'applicable': run is not None, 'finished': name in results}
    if name in results:
      x, iterations, memory = results[name]
      error, same = check(x, problem.x_star)
      row.update(time_s=statistics.median(times[name]), repeats=len(times[name]),
                 iterations=iterations, error=error, same_support=same,
                 solved=error <= TOLERANCE and same, memory_bytes=memory)
    elif run is not None:
      row.update(time_s=TIME_CAP_S, repeats=1, solved=False)
    rows.append(row)
  return rows


def run(dims, repeats: int) -> list:
  rows = []
  for d in dims:
    rows += measure(d, repeats if d <= DENSE_UP_TO else 1)
  return rows


def fastest(rows, d, prefix: str = '') -> Optional[dict]:
  """The fastest solver at size d that reached the solution (name starting with prefix)."""
  solved = [r for r in rows if r['d'] == d and r.get('solved') and r['solver'].startswith(prefix)]
  return min(solved, key=lambda r: r['time_s']) if solved else None


def markdown(rows) -> str:
  lines = ['| d | n | k | A | solver | time (s) | vs fastest | iterations | rel. error | '
           'same support | peak memory (MiB) |', '|---|---|---|---|---|---|---|---|---|---|---|']
  for row in rows:
    head = (f"| {row['d']:.0e} | {row['n']} | {row['k']} | {'dense' if row['dense'] else 'sparse'} "
            f"| {row['solver']} ")
    if not row['applicable']:
      lines.append(head + '| n/a: needs a dense matrix | | | | | |')
    elif not row['finished']:
      lines.append(head + f'| stopped at {TIME_CAP_S:.0f} | not solved | | | | |')
    else:
      best = fastest(rows, row['d'])
      ratio = f"{row['time_s'] / best['time_s']:.1f}x" if row['solved'] else 'not solved'
      lines.append(head + f"| {row['time_s']:.3g} | {ratio} | {row['iterations']} "
                   f"| {row['error']:.1e} | {'yes' if row['same_support'] else 'no'} "
                   f"| {row['memory_bytes'] / 2**20:.1f} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  print(markdown(run([int(d) for d in FLAGS.recovery_dims], FLAGS.recovery_repeats)))


if __name__ == '__main__':
  app.run(main)
