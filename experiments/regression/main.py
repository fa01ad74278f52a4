r"""The diagonal-linear-network study of PILoT's implicit bias (paper Section 5.1).

Least squares f(x) = ||A x - y||^2 / (2n) with n < d and a k-sparse truth x*,
trained from x_init ~ N(0, I / sqrt(d)) by full-batch SGD through four methods,
each with constant and decaying alpha schedules:

  pilot       x = m * w, decay alpha_t (||m||^2 + ||w||^2), beta = 1   (pcs.pilot)
  l1_m        x = m * w, explicit alpha_t ||m||_1, beta = 1
  l1_x        x = m * w, explicit alpha_t ||x||_1, beta = 1
  spred_init  pcs.pilot with beta = 0 (balanced init: no sign can flip)

It records ||x_t - x*||_2 over time, and sweeps int alpha to show the L2 -> L1
transition of the limit ||x_inf||_1 against the theory (pcs.theory.kkt_limit),
the basis-pursuit solution (LP) and the minimum-L2 correction. Writes
``<workdir>/regression.json`` and ``<workdir>/regression.png``, and with ``--readme`` the
table of :func:`markdown` into that Markdown file's ``<!-- regression -->`` block (``make
regression`` passes README.md), so no figure of it is copied by hand.

  python -m experiments.regression.main --workdir=/tmp/regression
"""

import functools
import json
import os
import time
from typing import Callable

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax
import tqdm

import pcs
from experiments.common import blocks
from experiments.regression.diagonal_network import Problem
from experiments.regression.diagonal_network import make_problem
from experiments.regression.diagonal_network import train
from pcs import theory

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line; defined by the entry point only, so that importing the module
  (tests, other binaries) defines no flags."""
  flags.DEFINE_string('workdir', None, 'Where to write regression.json and regression.png.')
  flags.DEFINE_string('readme', None, 'A Markdown file whose <!-- regression --> block gets '
                      'the results (`make regression` passes README.md).')
  config_flags.DEFINE_config_file(
      'config', os.path.join(os.path.dirname(__file__), 'configs', 'default.py'),
      'Experiment configuration.', lock_config=True)


def _l1_m(u: pcs.Factors, step):
  del step
  return jnp.sum(jnp.abs(u.m))


def _l1_x(u: pcs.Factors, step):
  del step
  return jnp.sum(jnp.abs(u.m * u.w))


def make_method(name: str, alpha: Callable, learning_rate: float, beta: float):
  """The optax transformation of one compared method; x is a single vector leaf."""
  inner = optax.sgd(learning_rate)
  everything = lambda path, leaf: True
  if name == 'pilot':
    return pcs.pilot(inner, alpha=alpha, beta=beta, where=everything)
  if name == 'spred_init':
    return pcs.pilot(inner, alpha=alpha, beta=0.0, where=everything)
  penalties = {'l1_m': _l1_m, 'l1_x': _l1_x}
  if name not in penalties:
    raise ValueError(f'Unknown method {name!r}; choose from pilot, l1_m, l1_x, spred_init.')
  method = pcs.Reparameterization(
      init=lambda x: pcs.product_init(x, beta), to_x=lambda u, step: u.m * u.w,
      penalty=penalties[name])
  return pcs.reparameterize(inner, method, alpha=alpha, where=everything)


def _constant(t, value):
  del t
  return jnp.full((), value, jnp.float32)


def schedules(config) -> dict:
  """alpha_t by name: the constants and alpha0 / k, alpha0 / k^2, alpha0 0.95^k."""
  epoch = lambda t: 1.0 + t // config.steps_per_epoch
  out = {f'const_{c:g}': functools.partial(_constant, value=c) for c in config.constants}
  a0 = config.decay_alpha0
  out['1/k'] = lambda t: a0 / epoch(t)
  out['1/k^2'] = lambda t: a0 / epoch(t)**2
  out['0.95^k'] = lambda t: a0 * 0.95**(epoch(t) - 1)
  return out


def compare_methods(config, problem: Problem, progress) -> dict:
  """||x_t - x*|| per method and schedule, mean and spread over the inits."""
  results = {}
  for method in config.methods:
    for sched_name, sched in schedules(config).items():
      tx = make_method(method, sched, config.learning_rate, config.beta)
      run = jax.jit(jax.vmap(functools.partial(
          train, tx, problem.A, problem.y, num_steps=config.num_steps,
          record_every=config.record_every)))
      _, trajectory = run(jnp.asarray(problem.x_inits, jnp.float32))
      errors = np.linalg.norm(np.asarray(trajectory, np.float64) - problem.x_star, axis=-1)
      results[f'{method}/{sched_name}'] = {
          'method': method, 'schedule': sched_name,
          'error_mean': errors.mean(0).tolist(), 'error_std': errors.std(0).tolist(),
          'final_error_mean': float(errors[:, -1].mean()),
          'final_error_std': float(errors[:, -1].std())}
      progress.update(1)
  return results


def transition(config, problem: Problem, progress) -> dict:
  """||x_inf||_1 of PILoT against int alpha, next to the theory's limit."""
  x0 = problem.x_inits[0]
  a0 = config.beta / 2
  measured, predicted = [], []
  for integral in config.transition_integrals:
    decay_steps = round(integral / (config.learning_rate * config.transition_alpha))
    alpha = lambda t, n=decay_steps: jnp.where(t < n, config.transition_alpha, 0.0)
    tx = pcs.pilot(optax.sgd(config.learning_rate), alpha=alpha, beta=config.beta,
                   where=lambda *_: True)
    x, _ = jax.jit(functools.partial(
        train, tx, problem.A, problem.y, num_steps=config.num_steps,
        record_every=config.num_steps))(jnp.asarray(x0, jnp.float32))
    measured.append(float(np.abs(np.asarray(x, np.float64)).sum()))
    a_inf = a0 * np.exp(-4 * config.learning_rate * config.transition_alpha * decay_steps)
    predicted.append(float(np.abs(theory.kkt_limit(problem.A, problem.y, x0, a0, a_inf)).sum()))
    progress.update(1)
  return {
      'integral_alpha': list(config.transition_integrals),
      'l1_pilot': measured, 'l1_theory': predicted,
      'l1_basis_pursuit': float(np.abs(theory.basis_pursuit(problem.A, problem.y)).sum()),
      'l1_min_l2': float(np.abs(theory.min_l2_correction(problem.A, problem.y, x0)).sum()),
  }


def plot(results: dict, config, path: str) -> None:
  """Two panels: ||x_t - x*|| over time (best schedule per method), and the transition."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  steps = np.arange(1, config.num_steps // config.record_every + 1) * config.record_every
  for method in config.methods:
    runs = [r for r in results['methods'].values() if r['method'] == method]
    for run in runs:
      best = run is min(runs, key=lambda r: r['final_error_mean'])
      mean = np.asarray(run['error_mean'])
      left.plot(steps, mean, lw=2 if best else 0.6, alpha=1 if best else 0.35,
                label=f"{method} ({run['schedule']})" if best else None)
  left.set(xlabel='step', ylabel=r'$\|x_t - x^*\|_2$', yscale='log',
           title='Distance to the sparse truth (bold: best schedule)')
  left.legend(fontsize=8)
  tr = results['transition']
  right.plot(tr['integral_alpha'], tr['l1_pilot'], 'o', label='PILoT (SGD limit)')
  right.plot(tr['integral_alpha'], tr['l1_theory'], '-', label=r'theory: argmin $R_{a_\infty}$')
  right.axhline(tr['l1_basis_pursuit'], ls='--', c='k', label='basis pursuit (L1)')
  right.axhline(tr['l1_min_l2'], ls=':', c='gray', label='min-L2 correction')
  right.set(xlabel=r'$\int \alpha_t\,dt$', ylabel=r'$\|x_\infty\|_1$',
            title='L2 -> L1 transition of the implicit bias')
  right.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


METHOD_NAMES = {'l1_x': 'L1 on x (explicit, through m ⊙ w)', 'l1_m': 'L1 on m',
                'pilot': 'PILoT (decay on m and w)', 'spred_init': 'spred init (β = 0)'}


def _schedule_name(name: str) -> str:
  return name.replace('const_', 'const ').replace('^2', '²')


def markdown(results: dict) -> str:
  """The results as README shows them: the best schedule per method (final ||x_T - x*||,
  mean ± std over the inits, best first), then the L2 -> L1 transition: the largest
  relative gap between PILoT's limit ||x_inf||_1 and the theory's, and its two ends
  against the min-L2 correction and basis pursuit."""
  best = {}
  for r in results['methods'].values():
    if r['method'] not in best or r['final_error_mean'] < best[r['method']]['final_error_mean']:
      best[r['method']] = r
  lines = ['| method | best schedule | ‖x_T − x*‖₂ |', '|---|---|---:|']
  for r in sorted(best.values(), key=lambda r: r['final_error_mean']):
    lines.append(f"| {METHOD_NAMES.get(r['method'], r['method'])} | "
                 f"{_schedule_name(r['schedule'])} | {r['final_error_mean']:.2g} ± "
                 f"{r['final_error_std']:.2g} |")
  tr = results['transition']
  measured, predicted = np.asarray(tr['l1_pilot']), np.asarray(tr['l1_theory'])
  gap = float(np.max(np.abs(measured - predicted) / predicted))
  first, last = tr['integral_alpha'][0], tr['integral_alpha'][-1]
  lines += ['', f'L2 → L1 transition (‖x_∞‖₁ of PILoT against ∫α): within {100 * gap:.1f}% of '
            'the theory\'s argmin_{Ax=y} R_{a_∞}(x) − c·x at every point, from '
            f'{measured[0]:.2f} measured / {predicted[0]:.2f} predicted at ∫α = {first:g} '
            f"(min-L2 correction {tr['l1_min_l2']:.2f}) to {measured[-1]:.2f} / "
            f"{predicted[-1]:.2f} at ∫α = {last:g} (basis pursuit "
            f"{tr['l1_basis_pursuit']:.2f}). {results['config']['num_inits']} initialisations, "
            f"{results['wall_time_s']:.0f} s."]
  return '\n'.join(lines)


def run_experiment(config, workdir: str) -> dict:
  """Runs both studies and writes regression.json and regression.png to ``workdir``."""
  start = time.time()
  problem = make_problem(config.seed, config.num_samples, config.dim,
                         config.num_nonzeros, config.num_inits)
  total = len(config.methods) * len(schedules(config)) + len(config.transition_integrals)
  with tqdm.tqdm(total=total, desc='regression', unit='run') as progress:
    results = {'config': config.to_dict(),
               'methods': compare_methods(config, problem, progress),
               'transition': transition(config, problem, progress)}
  results['wall_time_s'] = time.time() - start
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'regression.json'), 'w') as f:
    json.dump(results, f, indent=1)
  plot(results, config, os.path.join(workdir, 'regression.png'))
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required.')
  results = run_experiment(FLAGS.config, FLAGS.workdir)
  ranking = sorted(results['methods'].values(), key=lambda r: r['final_error_mean'])
  for r in ranking:
    logging.info('%-10s %-10s final ||x - x*|| = %.3g +- %.2g', r['method'], r['schedule'],
                 r['final_error_mean'], r['final_error_std'])
  print(f"{'method':<11}{'schedule':<12}final ||x_T - x*||  (mean +- std over inits)")
  for r in ranking:
    print(f"{r['method']:<11}{r['schedule']:<12}{r['final_error_mean']:.3g} +- "
          f"{r['final_error_std']:.2g}")
  print(f"Wrote {FLAGS.workdir}/regression.json and regression.png "
        f"in {results['wall_time_s']:.0f}s")
  if FLAGS.readme:
    blocks.write_between(FLAGS.readme, 'regression', markdown(results))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
