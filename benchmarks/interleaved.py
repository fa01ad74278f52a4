"""Timing several calls in alternation (rounds of A, B, C in shuffled order), so that whatever
else the machine does falls on all of them alike: what every sparse-inference table reports."""

import os
import random
import statistics
import sys
import time

import jax
import numpy as np

# A call of a few hundred microseconds timed only ``repeats`` times is at the mercy of one
# burst of noise: rounds go on until this much time has passed (at most MAX_ROUNDS).
MIN_SECONDS, MAX_ROUNDS = 0.3, 2000

# How long an idle OpenMP thread (torch's) spins before it sleeps, in rounds of libgomp's
# wait loop. By default it spins for milliseconds after each torch call and takes one of 2
# cores from whatever is timed next: pcs at 99% and batch 16, timed after torch CSR, took
# 151-221 us, and 139-142 us with this bound, while torch took 160-174 and 160-163 us (the
# Zen 4 measured). The bound still covers the gap between its untimed and timed call.
OPENMP_SPINS = 10000


def bound_openmp_spin() -> None:
  """Caps the spin of libgomp's idle threads at OPENMP_SPINS (GOMP_SPINCOUNT), which
  libgomp reads when it loads: call before the first import of torch (again after it, a
  no-op once the bound is set)."""
  if os.environ.get('GOMP_SPINCOUNT') == str(OPENMP_SPINS):
    return
  if 'torch' in sys.modules:
    raise RuntimeError('bound_openmp_spin() must run before torch is imported: libgomp '
                       'reads GOMP_SPINCOUNT once, when it loads.')
  os.environ['GOMP_SPINCOUNT'] = str(OPENMP_SPINS)


# The timing protocols a recorded run may have used, by number (runs recorded without the
# field used 1); targets are judged on the runs of the current one, PROTOCOL.
PROTOCOLS = {
    1: 'the variants in a fixed order, each call straight after the previous variant\'s, '
       'which charged the slowdown of a call made right after the dense one to the variant '
       'listed next (the README\'s call, for the MLP)',
    2: 'rounds in random order, each timed call after an untimed call of itself, but only '
       '`repeats` rounds, few for a fast call or a large batch',
    3: 'rounds in random order, each timed call after an untimed call of itself, for at '
       f'least {MIN_SECONDS:g} s, but torch\'s OpenMP threads, spinning for milliseconds '
       'after each of its calls, took a core from the calls timed after it',
    4: 'rounds in random order, each timed call after an untimed call of itself, for at '
       f'least {MIN_SECONDS:g} s; torch\'s OpenMP threads spin at most '
       f'{OPENMP_SPINS} rounds after a call (GOMP_SPINCOUNT) before they sleep',
}
PROTOCOL = 4

def ready(fn, *args):
  """``fn(*args)``, waited for: a thunk's body that times the whole call."""
  return jax.block_until_ready(fn(*args))


def medians(calls, repeats, seed=0, min_seconds=MIN_SECONDS):
  """Interleaved timing of ``{name: thunk}``: medians in ms, and under ``'spread'`` each
  one's interquartile range as a fraction of its median.

  Every round times each thunk once, in a new random order (from ``seed``), and each timed
  call follows an untimed call of the same thunk. Both because a call is slowed by what ran
  just before it: on a 2-core EPYC the 95%-sparse MLP called right after the dense one
  (which streams 80 MB) took 10-15% longer than the same call later in the round, even
  after up to six untimed calls of itself. In a fixed order (protocol 1) that penalty
  always fell on the variant listed after dense; shuffled, it falls on each alike, and two
  copies of one call time the same. Rounds go on past ``repeats`` until ``min_seconds``
  have passed (up to MAX_ROUNDS), so that fast calls get enough samples.
  """
  rng = random.Random(seed)
  for thunk in calls.values():
    thunk()
  times = {k: [] for k in calls}
  begin, rounds = time.perf_counter(), 0
  while rounds < repeats or (rounds < MAX_ROUNDS and min_seconds > 0
                             and time.perf_counter() - begin < min_seconds):
    rounds += 1
    for key in rng.sample(list(calls), len(calls)):
      calls[key]()
      start = time.perf_counter()
      calls[key]()
      times[key].append(time.perf_counter() - start)
  out = {k: 1e3 * statistics.median(v) for k, v in times.items()}
  out['spread'] = {k: float(np.subtract(*np.quantile(v, [0.75, 0.25])) / np.median(v))
                   for k, v in times.items()}
  return out


# The ways a whole model's dense call is timed: its weights given as arguments (as a
# training loop's state is), and closed over (jax then compiles them in as constants).
DENSE_CALLS = {'dense': 'given its weights', 'dense closed over': 'closed over'}


def over_dense(row, key: str, dense_keys=tuple(DENSE_CALLS)):
  """``(speed-up, note)``: ``row[key]``'s speed-up over the fastest dense call ``row``
  timed of ``dense_keys``; ``note`` names that call where ``row`` timed more than one."""
  timed = [k for k in dense_keys if k in row]
  fastest = min(timed, key=row.get)
  note = f' (against dense {DENSE_CALLS[fastest]}, the faster)' if len(timed) > 1 else ''
  return row[fastest] / row[key], note
