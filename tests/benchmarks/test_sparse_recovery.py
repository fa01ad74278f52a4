"""The sparse-recovery benchmark: its problems, its success test and every solver, small."""

import time

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from sklearn import linear_model

from benchmarks import sparse_recovery

D = 400  # n = 100, k = 10


@pytest.fixture(scope='module', params=['dense', 'sparse'])
def problem(request):
  if request.param == 'sparse':
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(sparse_recovery, 'DENSE_UP_TO', 0)
      return sparse_recovery.make_problem(D, seed=3)
  return sparse_recovery.make_problem(D, seed=3)


def test_problem_has_the_stated_shape_and_is_consistent(problem):
  assert problem.A.shape == (D // 4, D)
  assert np.count_nonzero(problem.x_star) == D // 40
  assert np.all(np.abs(problem.x_star[problem.x_star != 0]) >= 1.0)
  np.testing.assert_allclose(problem.A @ problem.x_star, problem.b, rtol=1e-12)
  if not problem.dense:
    assert problem.A.nnz == D * sparse_recovery.NONZEROS_PER_COLUMN


def test_x_star_is_the_basis_pursuit_solution(problem):
  """An independent LP written here (not the benchmark's) recovers x*."""
  A = problem.A.toarray() if not problem.dense else problem.A
  result = scipy.optimize.linprog(np.ones(2 * D), A_eq=np.hstack([A, -A]), b_eq=problem.b,
                                  bounds=(0, None), method='highs')
  np.testing.assert_allclose(result.x[:D] - result.x[D:], problem.x_star, atol=1e-7)


def test_check_by_hand():
  x_star = np.array([0.0, 2.0, 0.0, -1.0])
  assert sparse_recovery.check(x_star, x_star) == (0.0, True)
  error, same = sparse_recovery.check(1.01 * x_star, x_star)
  assert same and error == pytest.approx(0.01)
  # 3e-3 off the support is above the threshold 1e-3 * max|x*| = 2e-3: a different support.
  error, same = sparse_recovery.check(x_star + np.array([0, 0, 3e-3, 0]), x_star)
  assert not same and error == pytest.approx(3e-3 / np.sqrt(5))
  assert sparse_recovery.check(x_star + np.array([0, 0, 1e-3, 0]), x_star)[1]


def test_the_jax_operators_are_a_and_its_transpose(problem):
  A, At = sparse_recovery._operator(problem)
  dense = problem.A.toarray() if not problem.dense else problem.A
  v, r = np.random.default_rng(0).normal(size=(2, D))
  np.testing.assert_allclose(np.asarray(A @ v.astype(np.float32)), dense @ v, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(At @ r[:D // 4].astype(np.float32)), dense.T @ r[:D // 4],
                             rtol=1e-4, atol=1e-4)
  assert float(sparse_recovery._lipschitz(A, At, D)) == pytest.approx(
      1.05 * np.linalg.norm(dense, 2)**2, rel=0.03)


@pytest.mark.parametrize('name', list(sparse_recovery.SOLVERS))
def test_every_solver_reaches_x_star(problem, name):
  run = sparse_recovery.SOLVERS[name].prepare(problem)
  if run is None:
    assert name == 'LassoLars' and not problem.dense
    return
  x, iterations = run()
  error, same = sparse_recovery.check(x, problem.x_star)
  assert error <= sparse_recovery.TOLERANCE and same, (name, error, same)
  assert 0 < iterations < sparse_recovery.MAX_ITERATIONS


@pytest.mark.parametrize('kind', ['pilot', 'mirror'])
def test_pcs_with_constant_decay_solves_the_lasso(problem, kind):
  """A fixed alpha makes pcs a Lasso solver, checked against scikit-learn's coordinate
  descent run to a tight tolerance. pilot: lambda = 2 alpha (its decay goes through the
  momentum like the gradient). mirror: lambda = 2 alpha (1 - mu), because momentum mu
  amplifies the steady drift of z by 1 / (1 - mu) while a_t decays outside it."""
  lam = 0.1 * np.max(np.abs(problem.A.T @ problem.b))
  expected_lambda = {'pilot': lam, 'mirror': lam * (1 - 0.95)}[kind]
  lasso = linear_model.Lasso(expected_lambda / problem.A.shape[0], fit_intercept=False,
                             tol=1e-12, max_iter=100_000).fit(problem.A, problem.b).coef_
  solve = sparse_recovery._pcs_solver(kind, start=0.1, decay=1.0, momentum=0.95)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sparse_recovery, '_recovered', lambda x, x_star, threshold: jnp.asarray(False))
    patch.setattr(sparse_recovery, 'MAX_ITERATIONS', 5000)
    x, _ = sparse_recovery._jax_solver(solve)(problem)()
  atol = 1e-3 * np.abs(lasso).max()
  np.testing.assert_allclose(x, lasso, atol=atol)
  assert np.abs(lasso - problem.x_star).max() > 5 * atol  # not simply x*: the penalty matters


def test_measure_times_memory_and_the_time_cap(monkeypatch):
  def never_finishes(problem):
    del problem
    return lambda: time.sleep(60)

  solvers = sparse_recovery.SOLVERS
  monkeypatch.setattr(sparse_recovery, 'TIME_CAP_S', 5.0)
  monkeypatch.setattr(sparse_recovery, 'SOLVERS', {
      'pcs pilot': solvers['pcs pilot'], 'HiGHS simplex': solvers['HiGHS simplex'],
      'LassoLars': solvers['LassoLars'],
      'stuck': sparse_recovery.Solver(never_finishes, on_host=True)})
  rows = {r['solver']: r for r in sparse_recovery.measure(D, repeats=2)}
  assert rows['pcs pilot']['solved'] and rows['pcs pilot']['repeats'] == 2
  # HiGHS builds [A, -A] and its factors: memory it adds, measured in the forked child.
  assert rows['HiGHS simplex']['solved'] and rows['HiGHS simplex']['memory_bytes'] > 0
  assert rows['stuck']['time_s'] == 5.0 and not rows['stuck']['solved']
  table = sparse_recovery.markdown(list(rows.values()))
  assert '| 4e+02 | 100 | 10 | dense | stuck | stopped at 5 | not solved |' in table
  assert sparse_recovery.fastest(list(rows.values()), D)['solver'] in (
      'pcs pilot', 'HiGHS simplex', 'LassoLars')


def test_a_cpu_solver_that_dies_is_an_error_not_a_timeout(monkeypatch):
  def crashes(problem):
    del problem
    def run():
      raise MemoryError('out of memory')
    return run

  monkeypatch.setattr(sparse_recovery, 'SOLVERS', {
      'crashes': sparse_recovery.Solver(crashes, on_host=True)})
  start = time.perf_counter()
  with pytest.raises(RuntimeError, match='died in its child process'):
    sparse_recovery.measure(D, repeats=1)
  assert time.perf_counter() - start < sparse_recovery.TIME_CAP_S / 2
