"""The optimizer update alone, read from XLA's compiled HLO: passes over memory, fusions,
copies and temporary bytes of every method around every common inner optimizer.

For ``params <- apply_updates(params, tx.update(grads, state, params))``, jitted with
params and state donated (as the training binary does), on two 2048 x 2048 float32
kernels (8.4M weights):

- ``passes``: bytes XLA's cost analysis says the compiled update reads and writes,
  in units of the parameters' bytes (bare SGD: read g and x, write x = 3);
- ``minimum``: what the method cannot avoid, read g and x, write x, and read and
  write each state array once: ``3 + 2 * state / params``;
- ``fusions`` and ``copies``: loops and buffer copies over arrays in the entry
  computation; ``temp``: the compiled update's temporary bytes.

  python -m benchmarks.update_cost [--size=2048] [--repeats=12]
"""

import re
import statistics
import time
from typing import NamedTuple

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax

from benchmarks import step_overhead

flags.DEFINE_integer('size', 2048, 'Side of the two square kernels updated.')
flags.DEFINE_integer('update_repeats', 12, 'Timed updates per variant (after warm-up).')
FLAGS = flags.FLAGS

INNERS = {
    'sgd': (optax.sgd, 0.1),
    'momentum': (lambda lr: optax.sgd(lr, momentum=0.9), 0.1),
    'nesterov': (lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True), 0.1),
    'adam': (optax.adam, 1e-3),
    'adamw': (lambda lr: optax.adamw(lr, weight_decay=1e-4), 1e-3),
}


class WrittenOutState(NamedTuple):
  m: dict
  trace_m: dict
  trace_w: dict


def pilot_written_out(learning_rate: float, momentum: float, alpha: float, beta: float = 1.0
                      ) -> optax.GradientTransformation:
  """``pcs.pilot(optax.sgd(learning_rate, momentum), alpha=alpha, beta=beta)`` on a dict of
  kernels, written out in jnp with no wrapper: the floor of what XLA makes of the method's
  math (Jacobs & Burkholz, ICLR 2025, Algorithm 1 with constant alpha). Per weight, with
  w = x / m and the penalty alpha (m^2 + w^2):

      t_m <- mu t_m + g w + 2 alpha m,   t_w <- mu t_w + g m + 2 alpha w,
      m <- m - lr t_m,   x <- m (w - lr t_w).
  """
  def init(params):
    m = {k: jnp.sqrt((beta + jnp.hypot(beta, 2 * x)) / 2) for k, x in params.items()}
    return WrittenOutState(m, *({k: jnp.zeros_like(x) for k, x in params.items()}
                                for _ in range(2)))

  def update(grads, state, params):
    updates, m_new, trace_m, trace_w = {}, {}, {}, {}
    for k, x in params.items():
      g, m = grads[k], state.m[k]
      w = x / m
      trace_m[k] = momentum * state.trace_m[k] + g * w + 2 * alpha * m
      trace_w[k] = momentum * state.trace_w[k] + g * m + 2 * alpha * w
      m_new[k] = m - learning_rate * trace_m[k]
      updates[k] = m_new[k] * (w - learning_rate * trace_w[k]) - x
    return updates, WrittenOutState(m_new, trace_m, trace_w)

  return optax.GradientTransformation(init, update)


def hlo_counts(text: str) -> dict:
  """Loop fusions and copies with array results in the entry computation of HLO text."""
  entry = text[text.index('\nENTRY'):]
  array = r'= \w+\[\d[^\]]*\]\S* '  # an instruction with a non-scalar result
  return {'fusions': len(re.findall(array + r'fusion\(', entry)),
          'copies': len(re.findall(array + r'copy\(', entry))}


def analyse(tx, params, repeats: int) -> dict:
  """Passes, fusions, copies, temp bytes and median time of one donated update."""
  grads = jax.tree.map(lambda x: 1e-3 * jnp.ones_like(x), params)

  def update(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  update = jax.jit(update, donate_argnums=(0, 1))
  compiled = update.lower(params, state, grads).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  param_bytes = step_overhead.tree_bytes(params)
  carry = (jax.tree.map(jnp.copy, params), state)
  times = []
  for _ in range(repeats + 2):
    start = time.perf_counter()
    carry = compiled(*carry, grads)
    jax.block_until_ready(carry)
    times.append(time.perf_counter() - start)
  state_ratio = step_overhead.tree_bytes(state) / param_bytes
  return {'passes': cost['bytes accessed'] / param_bytes, 'minimum': 3 + 2 * state_ratio,
          'state': state_ratio, 'temp_mib': compiled.memory_analysis().temp_size_in_bytes / 2**20,
          'ms': statistics.median(times[2:]) * 1e3, **hlo_counts(compiled.as_text())}


def run(size: int, repeats: int, names=step_overhead.METHODS) -> list:
  """One row per (inner optimizer, method), with the time relative to the bare inner."""
  params = {'kernel_1': jnp.full((size, size), 0.1, jnp.float32),
            'kernel_2': jnp.full((size, size), -0.2, jnp.float32)}
  rows = []
  for inner, (make, lr) in INNERS.items():
    variants = step_overhead.variants(make, lr, names)
    if inner == 'momentum' and 'pilot' in names:
      variants['pilot written out'] = pilot_written_out(lr, 0.9, alpha=1e-4)
    results = {name: analyse(tx, params, repeats) for name, tx in variants.items()}
    for name, result in results.items():
      rows.append({'inner': inner, 'variant': name,
                   'ratio': result['ms'] / results['bare']['ms'], **result})
  return rows


def markdown(rows) -> str:
  lines = ['| inner | variant | passes (minimum) | fusions | copies | temp (MiB) | '
           'state / params | update (ms) | time / bare |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f"| {r['inner']} | {r['variant']} | {r['passes']:.1f} ({r['minimum']:.1f}) | "
                 f"{r['fusions']} | {r['copies']} | {r['temp_mib']:.0f} | {r['state']:.2f}x | "
                 f"{r['ms']:.1f} | {r['ratio']:.2f}x |")
  return '\n'.join(lines)


def main(argv):
  del argv
  print(markdown(run(FLAGS.size, FLAGS.update_repeats)))


if __name__ == '__main__':
  app.run(main)
