"""The quality benchmark's targets and their verdicts: the recommended PILoT recipe against
tuned GMP (>= at 95%; >= + 2 pp at 98% or 99%), and against the dense recipe of its own
schedule where it trains longer; the target-aware standalone PILoT within 2 pp of GMP at
90% and 95%; all paired over seeds after fine-tuning (the statistics:
:mod:`experiments.quality.seed_statistics`)."""

from typing import List, Optional

from experiments.common import config_checks
from experiments.quality import picking
from experiments.quality import protocol
from experiments.quality import seed_statistics
from experiments.quality import stages

PILOT_FAMILY = ('pilot', 'pilot+gmp', 'pilot+imp', 'mirror')
REFERENCE = 'dense+gmp'
# A recipe that trains longer than REFERENCE is also judged against the dense recipe
# with its own schedule, which trains as long.
SAME_BUDGET = {'imp': 'dense+imp'}
def training_epochs(recipe: str) -> int:
  """Epochs ``recipe`` trains before fine-tuning: the phases of
  :func:`experiments.common.phases.plan` that train with the method."""
  from experiments.common import phases  # pylint: disable=g-import-not-at-top
  from experiments.vision.configs import default  # pylint: disable=g-import-not-at-top
  config = config_checks.override(default.get_config(), protocol.RECIPES[recipe][0])
  return sum(phase.num_epochs for phase in phases.plan(config) if phase.optimizer == 'method')


def recommended(rows: List[dict], model: str) -> Optional[str]:
  """The PILoT recipe with the best tuning validation accuracy on ``model`` among those
  whose tuning has finished (chosen on validation, never on test) and that failed
  (:func:`failed`) on none of the seeds run (final runs, and robustness runs at the recipe's
  :func:`~experiments.quality.protocol.recipe_pick`; after fine-tuning). While
  a wider learning-rate round is under way, every recipe is judged over the grid of the
  earliest round any of them stands at, so all get the same tuning budget."""
  by_id = {row['id']: row for row in rows}
  found, stopped = seed_statistics.groups(rows, True), seed_statistics.diverged(rows)
  rounds = {}
  for recipe in PILOT_FAMILY:
    names = {recipe}  # its finals, and its robustness runs at the setting it is picked at
    pick = picking.recipe_pick(by_id, model, recipe)
    if recipe in protocol.ROBUSTNESS_RECIPES and pick is not None:
      names.add(stages.robustness_name(recipe, pick))
    cells = {key for key in set(found) | set(stopped) if key[0] == model and key[1] in names}
    if any(seed_statistics.failed(found.get(key, {}), stopped.get(key, ())) for key in cells):
      continue
    learning_rates = picking.tuning_round(by_id, model, recipe)
    if learning_rates is not None:
      rounds[recipe] = learning_rates
  if not rounds:
    return None
  common = min(rounds.values(), key=len)
  best = {recipe: max(picking.validation_accuracy(by_id[r['id']])
                      for r in protocol.tuning_rows(model, recipe, common))
          for recipe in rounds}
  return max(best, key=best.get)


SIGNIFICANCE = 0.05
# Issue 32's target against the equal-epoch baseline: by the median, at 98%.
MEDIAN_MARGIN, MEDIAN_SPARSITY = 2.0, 0.98
# Issue 32's target for the standalone PILoT that aims at the target: at most 2 pp under
# AIMED_REFERENCE by the median paired difference, at each of these sparsities. The one
# recipe the stages also tune at each target (protocol.AIM_REFERENCE), so that the rows at
# its 98% pick and at its own targets judge against the same recipe.
AIMED, AIMED_MARGIN, AIMED_SPARSITIES = protocol.AIMED, -2.0, protocol.AIM_SPARSITIES
AIMED_REFERENCE = protocol.AIM_REFERENCE


def _verdict(done: dict, margin: float) -> str:
  """``met`` only if some sparsity's mean paired difference reaches ``margin`` and, for a
  claimed gain (margin > 0), the paired t-test rejects "no difference" at 5%, and for a
  claimed parity (margin 0) the median difference is not negative either (a mean carried by
  one failed baseline seed is no parity); otherwise the reason."""
  def holds(r):
    return r.mean >= margin and (r.p < SIGNIFICANCE if margin > 0 else r.median >= 0)
  if any(holds(r) for r in done.values()):
    return 'met'
  best = max(done, key=lambda s: done[s].mean)
  mean, p = done[best].mean, done[best].p
  if mean >= margin and margin <= 0:
    return (f'not shown: the mean {mean:+.1f} pp at {best:.0%} is carried by few seeds (median '
            f'{done[best].median:+.1f})')
  if mean >= margin:
    return f'not shown: {mean:+.1f} pp at {best:.0%} is within noise (p={p:.2g})'
  noise = '' if p < SIGNIFICANCE else f' (p={p:.2g}, not significant)'
  return f'{_missed_by(margin - mean)}{noise}'


def _missed_by(short: float) -> str:
  """'missed by ...' for a shortfall of ``short`` pp (> 0)."""
  return f'missed by {short:.1f} pp' if short >= 0.05 else 'missed by less than 0.1 pp'


def verdicts(rows: List[dict], found, models) -> List[str]:
  """The issues' targets: the recommended PILoT recipe >= tuned GMP at 95%, and >= GMP
  + 2 pp at 98% or 99% with a significant paired difference, over >= 5 seeds (after
  fine-tuning), the same against the dense recipe of its own schedule where it trains
  longer, and there also >= + 2 pp by the median at 98% (:func:`_median_row`); then the
  target-aware standalone PILoT (:func:`_aimed_row`). Where the reference failed on a
  seed, the verdict says so and gives the difference on the seeds it trained on."""
  lines = ['| model | PILoT recipe | target | training epochs (recipe, reference) '
           '| paired difference | verdict |', '|---|---|---|---|---|---|']
  stopped = seed_statistics.diverged(rows)
  for model in models:
    recipe = recommended(rows, model)
    if recipe is None:
      lines += _aimed_rows(found, stopped, model)
      continue
    schedule = protocol.RECIPES[recipe][0]['schedule']
    for reference in (REFERENCE, *([SAME_BUDGET[schedule]] if schedule in SAME_BUDGET else [])):
      epochs = f'{training_epochs(recipe)}, {training_epochs(reference)}'
      for sparsities, margin in (((0.95,), 0.0), ((0.98, 0.99), 2.0)):
        results = {s: seed_statistics.paired(found.get((model, recipe, s), {}),
                             found.get((model, reference, s), {})) for s in sparsities}
        done = {s: r for s, r in results.items()
                if r is not None and _complete(found, stopped, model, (recipe, reference), s)}
        target = (f">= {reference} at {sparsities[0]:.0%}" if margin == 0 else
                  f">= {reference} + {margin:g} pp at 98% or 99%")
        shown = '; '.join(f'{s:.0%}: {seed_statistics.paired_cell(r)}'
                          for s, r in done.items()) or 'pending'
        verdict = 'pending' if len(done) < len(sparsities) else _verdict(done, margin)
        if len(done) == len(sparsities):
          verdict = _noting(verdict, _failed_reference(found, stopped, model, recipe,
                                                       reference, sparsities))
        lines.append(f'| {model} | {recipe} | {target} | {epochs} | {shown} | {verdict} |')
      if reference == SAME_BUDGET.get(schedule):
        lines.append(_median_row(found, stopped, model, recipe, reference, epochs))
    lines += _aimed_rows(found, stopped, model)
  return lines


def _aimed_rows(found, stopped, model: str) -> List[str]:
  """The target-aware standalone PILoT's rows: tuned at the tuning sparsity (AIMED) and at
  each target (AIM_STUDY) against AIMED_REFERENCE at 30 epochs, and, on the models whose
  long stage runs AIMED, both at the paper's LONG_EPOCHS, then AIM_STUDY against
  AIMED_REFERENCE tuned at each target alike (the same tuning rule)."""
  rows = [_aimed_row(found, stopped, model, name) for name in (AIMED, protocol.AIM_STUDY)]
  if AIMED in protocol.LONG_RECIPES.get(model, ()):
    long = protocol.long_name
    rows += [_aimed_row(found, stopped, model, long(name), long(AIMED_REFERENCE),
                        protocol.LONG_EPOCHS) for name in (AIMED, protocol.AIM_STUDY)]
    rows.append(_aimed_row(found, stopped, model, long(protocol.AIM_STUDY),
                           long(protocol.at_target_study(AIMED_REFERENCE)),
                           protocol.LONG_EPOCHS))
  return rows


def _aimed_row(found, stopped, model: str, name: str = AIMED,
               reference: str = AIMED_REFERENCE, epochs: Optional[int] = None) -> str:
  """Issue 32's target for the standalone PILoT that aims at the target
  (``pcs.target_alpha_controller``): its median paired difference to ``reference`` is at
  least AIMED_MARGIN pp at each of AIMED_SPARSITIES; the verdict names the sparsity that
  misses most, and a reference that failed on some seeds. ``name``: AIMED (tuned at the
  tuning sparsity), AIM_STUDY (tuned at each target) or either's rows of the long stage,
  where both train ``epochs`` (else each recipe's own, :func:`training_epochs`)."""
  trained = (f'{epochs}, {epochs}' if epochs is not None else
             f'{training_epochs(AIMED)}, {training_epochs(reference)}')
  target = (f'>= {reference} {AIMED_MARGIN:+g} pp by median at '
            + ' and '.join(f'{s:.0%}' for s in AIMED_SPARSITIES))
  results = {s: seed_statistics.paired(found.get((model, name, s), {}),
                                       found.get((model, reference, s), {}))
             for s in AIMED_SPARSITIES}
  done = {s: r for s, r in results.items()
          if r is not None and _complete(found, stopped, model, (name, reference), s)}
  if len(done) < len(AIMED_SPARSITIES):
    return f'| {model} | {name} | {target} | {trained} | pending | pending |'
  worst = min(done, key=lambda s: done[s].median)
  short = AIMED_MARGIN - done[worst].median
  verdict = 'met' if short <= 0 else f'{_missed_by(short)} at {worst:.0%}'
  verdict = _noting(verdict, _failed_reference(found, stopped, model, name, reference,
                                               AIMED_SPARSITIES))
  shown = '; '.join(f'{s:.0%}: {seed_statistics.paired_cell(r)}' for s, r in done.items())
  return f'| {model} | {name} | {target} | {trained} | {shown} | {verdict} |'


def _complete(found, stopped, model: str, names, sparsity: float, seeds: int = 5) -> bool:
  """Whether every one of ``names`` has ``seeds`` runs recorded at ``sparsity`` on the same
  seeds, finished or stopped (a diverged seed of the reference does not leave a target
  pending; the verdict names it)."""
  common = None
  for name in names:
    done = (set(found.get((model, name, sparsity), {}))
            | set(stopped.get((model, name, sparsity), ())))
    common = done if common is None else common & done
  return len(common) >= seeds


def median_paired(found, stopped, model: str, recipe: str,
                  reference: str) -> Optional[seed_statistics.Paired]:
  """``recipe`` against ``reference`` at MEDIAN_SPARSITY, paired by seed, once both have
  every seed (:func:`_complete`); else None."""
  s = MEDIAN_SPARSITY
  result = seed_statistics.paired(found.get((model, recipe, s), {}),
                                  found.get((model, reference, s), {}))
  return result if _complete(found, stopped, model, (recipe, reference), s) else None


def _median_row(found, stopped, model: str, recipe: str, reference: str, epochs: str) -> str:
  """The target of issue 32: ``recipe`` beats ``reference`` at equal training epochs by
  MEDIAN_MARGIN pp by the median paired difference at MEDIAN_SPARSITY, against a
  reference that failed on none of the seeds (else the verdict says so)."""
  s = MEDIAN_SPARSITY
  result = median_paired(found, stopped, model, recipe, reference)
  target = f'>= {reference} + {MEDIAN_MARGIN:g} pp by median at {s:.0%}'
  if result is None:
    return f'| {model} | {recipe} | {target} | {epochs} | pending | pending |'
  short = MEDIAN_MARGIN - result.median
  verdict = 'met' if short <= 0 else _missed_by(short)
  verdict = _noting(verdict, _failed_reference(found, stopped, model, recipe, reference, (s,)))
  return (f'| {model} | {recipe} | {target} | {epochs} | {s:.0%}: '
          f'{seed_statistics.paired_cell(result)} | {verdict} |')


def _noting(verdict: str, failed: str) -> str:
  """``verdict`` with the note of :func:`_failed_reference` (if any): a 'met' against a
  baseline that collapsed is no plain 'met'."""
  if not failed:
    return verdict
  return f'met against a failing reference{failed}' if verdict == 'met' else verdict + failed


def _failed_reference(found, stopped, model: str, recipe: str, reference: str,
                      sparsities) -> str:
  """Where the reference failed on some seeds (:func:`seed_statistics.failed`), what the
  verdict stands on: those seeds, and the paired median over the seeds it trained on, so
  that no gain is read off a baseline that collapsed ('' where it failed on none)."""
  notes = []
  for s in sparsities:
    ours, theirs = found.get((model, recipe, s), {}), found.get((model, reference, s), {})
    bad = seed_statistics.failed(theirs, stopped.get((model, reference, s), ()))
    if not bad:
      continue
    rest = seed_statistics.paired({k: v for k, v in ours.items() if k not in bad},
                                  {k: v for k, v in theirs.items() if k not in bad})
    on_rest = ('' if rest is None else
               f': on its other seeds the median difference is {rest.median:+.1f} (n={rest.n})')
    seeds = ', '.join(f's{seed} ({why})' for seed, why in sorted(bad.items()))
    notes.append(f'{reference} failed at {s:.0%} on {seeds}{on_rest}')
  return ''.join(f'; {note}' for note in notes)
