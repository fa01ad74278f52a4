"""Timing several calls in alternation (A, B, C, A, B, C, ...), so that whatever else the
machine does falls on all of them alike: what every sparse-inference table reports."""

import statistics
import time

import jax
import numpy as np


def ready(fn, *args):
  """``fn(*args)``, waited for: a thunk's body that times the whole call."""
  return jax.block_until_ready(fn(*args))


def medians(calls, repeats):
  """Interleaved timing of ``{name: thunk}``: medians in ms, and under ``'spread'`` each
  one's interquartile range as a fraction of its median."""
  for thunk in calls.values():
    thunk()
  times = {k: [] for k in calls}
  for _ in range(repeats):
    for key, thunk in calls.items():
      start = time.perf_counter()
      thunk()
      times[key].append(time.perf_counter() - start)
  out = {k: 1e3 * statistics.median(v) for k, v in times.items()}
  out['spread'] = {k: float(np.subtract(*np.quantile(v, [0.75, 0.25])) / np.median(v))
                   for k, v in times.items()}
  return out
