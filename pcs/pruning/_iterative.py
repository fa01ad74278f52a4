"""Iterative magnitude pruning with weight rewinding (WR) or learning-rate rewinding (LRR).

Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019 (WR, with Frankle et al.,
"Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020, for rewinding
to an early iterate); Renda, Frankle & Carbin, "Comparing Rewinding and Fine-tuning in
Neural Network Pruning", ICLR 2020 (LRR).
"""

import os
from typing import Any, Callable, List, NamedTuple, Optional

import jax

from pcs.core import _checks as checks
from pcs.core import _extras as extras
from pcs.pruning import _masks as pruning
from pcs.core import _selection as selection

REWINDS = ('weights', 'learning_rate')


def cycle_sparsity(cycle: int, num_cycles: int, final_sparsity: float) -> float:
  """The sparsity IMP prunes to after cycle ``cycle`` of ``num_cycles``:

      s_c = 1 - (1 - s)^(c / K),   s_K = s exactly,

  a constant fraction (1 - s)^(1/K) of the remaining weights kept per cycle (Frankle &
  Carbin, ICLR 2019; the paper's 25 cycles at 80% are K = 25, s = 1 - 0.8^25).

  Example:
    >>> import pcs
    >>> [round(pcs.cycle_sparsity(c, 2, 0.75), 3) for c in range(3)]
    [0.0, 0.5, 0.75]
  """
  checks.check_integer('num_cycles', num_cycles, minimum=1)
  if not 0 <= cycle <= num_cycles:
    raise ValueError(f'`cycle` must lie in [0, num_cycles={num_cycles}]; got {cycle!r}.')
  if not 0.0 <= final_sparsity < 1.0:
    raise ValueError(f'`final_sparsity` must lie in [0, 1); got {final_sparsity!r}.')
  if cycle == num_cycles:
    return float(final_sparsity)
  return 1.0 - (1.0 - final_sparsity) ** (cycle / num_cycles)


class IterativePruningResult(NamedTuple):
  """params: after the last retraining; masks: final (True = kept); history: per cycle."""
  params: Any
  masks: Any
  history: List[dict]


def iterative_pruning(
    train: Callable[[Any, Any, int], Any],
    params: Any,
    *,
    num_cycles: int,
    keep_fraction: float = 0.8,
    rewind: str = 'weights',
    rewind_params: Any = None,
    scope: str = 'global',
    where: selection.Where = None,
    checkpoint_dir: Optional[str] = None,
) -> IterativePruningResult:
  """Cycles of train -> prune -> rewind -> retrain, with any trainer.

  Cycle c = 0..num_cycles calls ``train(start_params, masks, c) -> trained_params``
  (the caller trains with its own loop and optimizer, e.g. wrapped in
  ``pcs.keep_masked(tx, masks)``, any pcs method including ``pcs.pilot``). After cycles
  0..num_cycles-1 the trained weights are pruned (:func:`pcs.prune`) to
  :func:`cycle_sparsity` ``(c + 1, num_cycles, 1 - keep_fraction^num_cycles)``, i.e.
  ``1 - keep_fraction^(c+1)``: a fraction ``1 - keep_fraction`` of the remaining weights
  each cycle. The experiments' binary prunes its cycles with the same function. The next
  cycle starts from

    * ``rewind='weights'`` (WR): ``rewind_params * masks``, the rewind point (default:
      the ``params`` passed in; pass an early iterate for late rewinding);
    * ``rewind='learning_rate'`` (LRR): ``trained * masks``; the caller's learning-rate
      schedule restarts because ``train`` is called afresh. Give that schedule a warmup of
      a few epochs with ``pcs.pilot``: its step on x is lr sqrt(a^2 + 4 x^2) g, so the
      large weights a high sparsity leaves step several times faster than dense ones, and
      a one-epoch warmup to the peak rate diverged at 98% on mnist1d (QUALITY.md).

  With ``checkpoint_dir``, the masks, rewind point and next start are saved with orbax
  after every cycle, and a rerun with the same directory resumes after the last
  completed cycle.

  Example:
    >>> import jax.numpy as jnp, pcs
    >>> train = lambda params, masks, cycle: params  # your loop, e.g. with pcs.keep_masked
    >>> result = pcs.iterative_pruning(train, {'w': jnp.arange(1.0, 11.0).reshape(2, 5)},
    ...                                num_cycles=2, keep_fraction=0.5)
    >>> [h['sparsity'] for h in result.history]
    [0.0, 0.5, 0.8]

  Returns:
    A :class:`IterativePruningResult` with the last trained params, the final masks and a
    history of ``{'cycle', 'target_sparsity', 'sparsity'}`` per cycle.
  """
  checks.check_integer('num_cycles', num_cycles, minimum=0)
  checks.check_scalar('keep_fraction', keep_fraction, minimum=0.0)
  if not 0.0 < keep_fraction <= 1.0:
    raise ValueError(f'`keep_fraction` must be in (0, 1]; got {keep_fraction!r}.')
  if rewind not in REWINDS:
    raise ValueError(f'`rewind` must be one of {REWINDS}; got {rewind!r}.')
  pruning.check_scope(scope)
  rewind_params = params if rewind_params is None else rewind_params
  if jax.tree.structure(rewind_params) != jax.tree.structure(params):  # type: ignore[operator]  # PyTreeDef's stubs lack ==
    raise ValueError('`rewind_params` must have the structure of params.')
  selection.check_selects_some(params, selection.select(params, where), 'iterative_pruning')

  record = {'cycle': 0, 'start': params, 'rewind': rewind_params,
            'masks': pruning.all_kept(params),
            'history': []}
  manager = None
  if checkpoint_dir is not None:
    ocp = extras.require('orbax.checkpoint', 'pcs.iterative_pruning(checkpoint_dir=...)')
    manager = ocp.CheckpointManager(os.path.abspath(checkpoint_dir),
                                    options=ocp.CheckpointManagerOptions(max_to_keep=2))
    if manager.latest_step() is not None:
      record = _restore(ocp, manager, record)

  final = 1.0 - keep_fraction ** num_cycles
  for cycle in range(record['cycle'], num_cycles + 1):
    trained = train(record['start'], record['masks'], cycle)
    achieved = pruning.summary(trained, where).sparsity
    target = cycle_sparsity(cycle, num_cycles, final) if num_cycles else 0.0
    record['history'].append({'cycle': cycle, 'target_sparsity': target, 'sparsity': achieved})
    if cycle == num_cycles:
      if manager is not None:
        manager.close()
      return IterativePruningResult(trained, record['masks'], record['history'])
    pruned, masks = pruning.prune(trained, cycle_sparsity(cycle + 1, num_cycles, final),
                                  scope=scope, where=where)
    start = pruned if rewind == 'learning_rate' else pruning.apply_masks(record['rewind'], masks)
    record = {'cycle': cycle + 1, 'start': start, 'rewind': record['rewind'],
              'masks': masks, 'history': record['history']}
    if manager is not None:
      manager.save(cycle + 1, args=ocp.args.StandardSave(_as_saved(record)))
      manager.wait_until_finished()
  raise AssertionError('unreachable')


def _as_saved(record):
  history = record['history']
  return {'cycle': record['cycle'], 'start': record['start'], 'rewind': record['rewind'],
          'masks': record['masks'],
          'history': {key: [h[key] for h in history]
                      for key in ('cycle', 'target_sparsity', 'sparsity')}}


def _restore(ocp, manager, template):
  step = manager.latest_step()
  abstract = _as_saved(template)
  abstract['history'] = {key: [0.0] * step for key in abstract['history']}
  saved = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  history = [{'cycle': int(c), 'target_sparsity': float(t), 'sparsity': float(s)}
             for c, t, s in zip(*(saved['history'][k]
                                  for k in ('cycle', 'target_sparsity', 'sparsity')))]
  return {'cycle': int(saved['cycle']), 'start': saved['start'], 'rewind': saved['rewind'],
          'masks': saved['masks'], 'history': history}
