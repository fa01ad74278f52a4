r"""Turns a folder of results.json files into a markdown table and an accuracy-vs-sparsity plot.

  python -m experiments.vision.report --results=runs/demo

Groups runs by (method, target sparsity) and reports the mean accuracy on the
evaluation split (test, or validation when held out) and its spread (sample standard
deviation) over seeds. A method run under a schedule other than one-shot pruning is
named ``<method>+<schedule>`` (``dense+gmp`` is GMP).
"""

import collections
import glob
import json
import os
from typing import List

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string('results', None, 'Folder searched recursively for results.json files.')


def load(folder: str) -> List[dict]:
  paths = sorted(glob.glob(os.path.join(folder, '**', 'results.json'), recursive=True))
  results = []
  for path in paths:
    with open(path) as f:
      results.append(json.load(f))
  return results


def _cell(values) -> str:
  values = np.asarray(values)
  if len(values) == 1:
    return f'{values[0]:.1f}'
  return f'{values.mean():.1f} ± {values.std(ddof=1):.1f} (n={len(values)})'


def label(result: dict) -> str:
  """``method``, or ``method+schedule`` for a schedule other than one-shot pruning."""
  schedule = result.get('schedule', 'one_shot')
  return result['method'] if schedule == 'one_shot' else f"{result['method']}+{schedule}"


def split_name(results: List[dict]) -> str:
  names = {r.get('eval_split', 'test') for r in results}
  if len(names) != 1:
    raise ValueError(f'The results mix evaluation splits {sorted(names)}; report them apart.')
  return names.pop()


def accuracies(results: List[dict]) -> dict:
  """Accuracies (%) on the evaluation split grouped by (method label, target sparsity),
  one entry per seed."""
  key = f'{split_name(results)}_accuracy'
  groups = collections.defaultdict(list)
  for r in results:
    if key in r:  # a run that collapsed and stopped has none
      groups[(label(r), r['target_sparsity'])].append(100 * r[key])
  return groups


def table(results: List[dict]) -> str:
  """Markdown: one row per method, one column per target sparsity (test accuracy, %)."""
  groups = accuracies(results)
  sparsities = sorted({s for _, s in groups})
  methods = sorted({m for m, _ in groups}, key=lambda m: (m != 'dense', m))
  title = ' / '.join(sorted({f"{r['dataset']} {r['model']}" for r in results}))
  lines = [f'{split_name(results).capitalize()} accuracy (%) on {title}, by target sparsity '
           '(mean ± std over seeds):', '',
           '| method | ' + ' | '.join(f'{s:.0%}' for s in sparsities) + ' |',
           '|---|' + '---:|' * len(sparsities)]
  for method in methods:
    cells = [_cell(groups[(method, s)]) if (method, s) in groups else '' for s in sparsities]
    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  collapsed = [f"- {label(r)} at {r['target_sparsity']:.0%}, seed {r['seed']}: {r['collapsed']}"
               for r in results if 'collapsed' in r]
  if collapsed:
    lines += ['', 'Runs that collapsed (left out of the table if they stopped):', *collapsed]
  return '\n'.join(lines)


def plot(results: List[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  groups = accuracies(results)
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for method in sorted({m for m, _ in groups}):
    points = sorted((s, np.mean(v), np.std(v)) for (m, s), v in groups.items() if m == method)
    s, mean, std = (np.asarray(c) for c in zip(*points))
    if method == 'dense' and len(s) == 1:
      ax.axhline(mean[0], ls='--', c='k', label='dense (0%)')
      continue
    ax.errorbar(s * 100, mean, yerr=std, marker='o', capsize=3, label=method)
  ax.set(xlabel='sparsity (%)', ylabel=f'{split_name(results)} accuracy (%)',
         title='Accuracy vs sparsity')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(folder: str) -> str:
  """Writes report.md and accuracy_vs_sparsity.png into ``folder``; returns the table."""
  results = load(folder)
  if not results:
    raise ValueError(f'No results.json found under {folder!r}.')
  text = table(results)
  with open(os.path.join(folder, 'report.md'), 'w') as f:
    f.write(text + '\n')
  plot(results, os.path.join(folder, 'accuracy_vs_sparsity.png'))
  return text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.results:
    raise app.UsageError('--results is required.')
  print(report(FLAGS.results))


if __name__ == '__main__':
  app.run(main)
