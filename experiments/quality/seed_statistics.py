"""The per-seed statistics of the quality benchmark's tables, from recorded runs.

Every figure of QUALITY.md comes from here: means and sample standard
deviations over seeds; medians, worst seeds and failed runs (:mod:`experiments.common.failures`:
diverged, at chance, or more than 10 pp under the median of their cell); and paired
differences (same model, sparsity and seed) with a two-sided paired t-test (Student, 1908;
``scipy.stats.ttest_rel``) and a Wilcoxon signed-rank test (Wilcoxon, 1945; exact for
small samples), which an outlier cannot swing as it swings a mean. With 5 seeds the exact
two-sided Wilcoxon p cannot go below 2/32 = 0.0625, so the verdicts' significance is the
t-test's.
"""

import collections
from typing import Dict, Iterable, List, NamedTuple, Optional

import numpy as np

from experiments.common import failures
from experiments.quality import protocol


def _accuracy(row: dict, after_finetune: bool) -> Optional[float]:
  results = row['results']
  if stopped_early(row):
    return None
  key = 'test_accuracy' if after_finetune else 'test_accuracy_before_finetune'
  return 100 * results[key] if results.get(key) is not None else None


def groups(rows: Iterable[dict], after_finetune: bool = True) -> Dict[tuple, Dict[int, float]]:
  """{(model, name, sparsity): {seed: test accuracy %}} of final and study runs; ``name``
  is the recipe for final runs and the study's name for study runs."""
  out: Dict[tuple, Dict[int, float]] = collections.defaultdict(dict)
  for row in rows:
    if row['stage'] == 'tune':
      continue
    value = _accuracy(row, after_finetune)
    if value is not None:
      name = row['study'] or row['recipe']
      out[(row['model'], name, row['overrides']['sparsity'])][row['overrides']['seed']] = value
  return out


def stopped_early(row: dict) -> bool:
  """Whether the run stopped without an accuracy: a non-finite loss, or a collapse."""
  return 'diverged' in row['results'] or 'collapsed' in row['results']


def diverged(rows: Iterable[dict]) -> Dict[tuple, List[int]]:
  """{(model, name, sparsity): [seeds]} of the final, study and robustness runs that
  diverged (stopped on a non-finite loss or a collapse): each is a failure the
  accuracies leave out."""
  out: Dict[tuple, List[int]] = collections.defaultdict(list)
  for row in rows:
    if row['stage'] != 'tune' and stopped_early(row):
      out[(row['model'], row['study'] or row['recipe'], row['overrides']['sparsity'])].append(
          row['overrides']['seed'])
  return out


def off_target(rows: Iterable[dict]) -> Dict[tuple, float]:
  """{(model, name, sparsity): the achieved sparsity farthest from the target} of the cells
  with a final or study run that missed its target
  (:func:`experiments.common.failures.off_target`)."""
  out: Dict[tuple, float] = {}
  for row in rows:
    achieved = row['results'].get('achieved_sparsity')
    if row['stage'] == 'tune' or achieved is None:
      continue
    target = row['overrides']['sparsity']
    key = (row['model'], row['study'] or row['recipe'], target)
    if failures.off_target(target, achieved) and abs(achieved - target) > abs(
        out.get(key, target) - target):
      out[key] = achieved
  return out


def cell(values) -> str:
  values = np.asarray(list(values), float)
  if not len(values):
    return ''
  if len(values) == 1:
    return f'{values[0]:.1f} (n=1)'
  return f'{values.mean():.1f} ± {values.std(ddof=1):.1f}'


class Paired(NamedTuple):
  """A paired difference a - b over the seeds both have (pp)."""
  mean: float
  sd: float
  p: float  # two-sided paired t-test
  n: int
  median: float
  wilcoxon_p: float  # two-sided Wilcoxon signed-rank test


def paired(a: Dict[int, float], b: Dict[int, float]) -> Optional[Paired]:
  """The paired difference of ``a`` and ``b`` ({seed: accuracy}), or None under 2 seeds."""
  seeds = sorted(set(a) & set(b))
  if len(seeds) < 2:
    return None
  from scipy import stats  # pylint: disable=g-import-not-at-top
  diff = np.asarray([a[s] - b[s] for s in seeds])
  p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue) \
      if diff.std() > 0 else (0.0 if diff.mean() else 1.0)
  wilcoxon = float(stats.wilcoxon(diff).pvalue) if np.any(diff) else 1.0
  return Paired(float(diff.mean()), float(diff.std(ddof=1)), p, len(seeds),
                float(np.median(diff)), wilcoxon)


def paired_cell(result: Optional[Paired]) -> str:
  if result is None:
    return ''
  return (f'{result.mean:+.1f} ± {result.sd:.1f} (p={result.p:.2g}, n={result.n}); median '
          f'{result.median:+.1f} (Wilcoxon p={result.wilcoxon_p:.2g})')


def failed(values: Dict[int, float], stopped=()) -> Dict[int, str]:
  """``{seed: why}`` of the failed runs (:func:`experiments.common.failures.failed`) of one cell:
  ``values`` {seed: accuracy %} and the seeds ``stopped`` without an accuracy."""
  return failures.failed({**{seed: v / 100 for seed, v in values.items()},
                          **{seed: None for seed in stopped}}, protocol.NUM_CLASSES)


def spread(values: Dict[int, float], stopped=()) -> tuple:
  """``(median, worst, worst seed, failures)`` of {seed: accuracy %} and the seeds
  ``stopped`` (diverged), which are the worst and fail; the median and the worst as
  text ('-' for a median of no finished run)."""
  median = f'{np.median(list(values.values())):.1f}' if values else '-'
  if stopped:
    worst, seed = 'diverged', min(stopped)
  else:
    seed = min(values, key=values.get)
    worst = f'{values[seed]:.1f}'
  return median, worst, seed, len(failed(values, stopped))
