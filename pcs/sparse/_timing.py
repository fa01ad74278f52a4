"""Timing a sparse call against its dense counterpart, as the export decides by it.

The two calls are compiled, then timed in pairs so that whatever else the machine does
falls on both alike: each pair runs the two in a new random order (seeded), each timed run
right after an untimed run of itself, since a call made straight after the other one runs
slower (10-15% for a 95%-sparse 4096 x 4096 layer after the dense one, measured on a 2-core
Zen 3) and a fixed order would charge that to the same call every time. Each pair gives one
speed-up r_i = t_dense,i / t_sparse,i. A layer's decision reads the median of the r_i, the
whole model's their lower quartile (``_export._checked_together``), and the timing goes on
(up to a time budget) while the quartiles of the r_i straddle the threshold the decision
compares with, so a noisy machine buys more runs instead of a coin flip.
"""

import time
from typing import Any, Callable, List, NamedTuple, Optional

import jax
import numpy as np

MIN_PAIRS = 11
MIN_SECONDS = 0.05
MAX_SECONDS = 1.0
MAX_PAIRS = 2000


class Comparison(NamedTuple):
  """Dense against sparse: medians in ms, the paired speed-up's median and quartiles."""
  dense_ms: float
  sparse_ms: float
  speedup: float
  speedup_low: float
  speedup_high: float
  pairs: int

  def describe(self) -> str:
    """``'sparse 0.4 ms vs dense 2.1 ms (5.20x dense, quartiles 5.0-5.4x, 41 pairs)'``."""
    return (f'sparse {self.sparse_ms:.3f} ms vs dense {self.dense_ms:.3f} ms '
            f'({self.speedup:.2f}x dense, quartiles {self.speedup_low:.2f}-'
            f'{self.speedup_high:.2f}x, {self.pairs} pairs)')


def compiled(fn: Callable, *args) -> Callable[[], Any]:
  """A thunk running ``jax.jit(fn)(*args)`` to completion, compiled and run once."""
  executable = jax.jit(fn).lower(*args).compile()
  thunk = lambda: jax.block_until_ready(executable(*args))
  thunk()
  return thunk


def compare_calls(dense: Callable, sparse: Callable, *args,
                  threshold: float = 1.0) -> Comparison:
  """:func:`compare` of ``dense(*args)`` and ``sparse(*args)``, each run to completion."""
  return compare(lambda: jax.block_until_ready(dense(*args)),
                 lambda: jax.block_until_ready(sparse(*args)), threshold=threshold)


def compare(dense: Callable[[], Any], sparse: Callable[[], Any], *,
            threshold: float = 1.0, seed: int = 0,
            before: Optional[Callable[[], Any]] = None) -> Comparison:
  """Times two thunks in pairs until the speed-up is clear of ``threshold``.

  Each pair runs them in a random order (``seed``), each timed run after an untimed run
  of itself (module docstring), and, given ``before``, that untimed run after a call of
  ``before`` (other work, as a layer of a model runs after other ops). Runs at least
  ``MIN_PAIRS`` pairs and ``MIN_SECONDS``; then continues, up to ``MAX_SECONDS`` or
  ``MAX_PAIRS``, while the quartiles of the paired speed-ups t_dense / t_sparse lie on
  both sides of ``threshold``.
  """
  dense_times: List[float] = []
  sparse_times: List[float] = []
  rng = np.random.default_rng(seed)
  start = time.perf_counter()
  while True:
    pair = [(dense, dense_times), (sparse, sparse_times)]
    for i in rng.permutation(2):
      thunk, times = pair[i]
      if before is not None:
        before()
      thunk()
      begin = time.perf_counter()
      thunk()
      times.append(time.perf_counter() - begin)
    spent, pairs = time.perf_counter() - start, len(dense_times)
    if pairs < MIN_PAIRS or spent < MIN_SECONDS:
      continue
    ratios = np.asarray(dense_times) / np.maximum(np.asarray(sparse_times), 1e-12)
    low, high = np.quantile(ratios, [0.25, 0.75])
    if not low < threshold < high or spent > MAX_SECONDS or pairs >= MAX_PAIRS:
      return Comparison(1e3 * float(np.median(dense_times)),
                        1e3 * float(np.median(sparse_times)), float(np.median(ratios)),
                        float(low), float(high), pairs)
