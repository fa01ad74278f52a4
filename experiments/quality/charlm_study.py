"""QUALITY.md's table of the study that sparsifies a trained character LM
(:mod:`experiments.charlm.sparsify_trained`), from its records: one line of
``quality/charlm/sparsify_trained.jsonl`` per seed (the study's ``sparsify_trained.json``
with its seed)."""

import json
import os
from typing import Dict, List

import numpy as np

RECORD = os.path.join('charlm', 'sparsify_trained.jsonl')
METHODS = ('magnitude', 'wanda', 'gmp', 'pilot+gmp')


def load(folder: str) -> List[dict]:
  """The study's records in ``folder`` (the quality record's folder), [] if none."""
  path = os.path.join(folder, RECORD)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _cell(values: List[float]) -> str:
  if len(values) == 1:
    return f'{values[0]:.3f} (n=1)'
  return f'{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}'


def markdown(records: List[dict]) -> str:
  """Bits per byte on the records' evaluation split (lower is better) per method and
  sparsity, mean ± sd over seeds, and PILoT inside GMP minus GMP paired by seed."""
  by: Dict[tuple, Dict[int, float]] = {}
  for record in records:
    for run in record['runs']:
      by.setdefault((run['method'], run['sparsity']), {})[record['seed']] = run['bits_per_byte']
  sparsities = sorted({s for _, s in by})
  seeds = sorted(r['seed'] for r in records)
  first = records[0]
  lines = [f"Bits per byte on the {first['eval_split']} split (lower is better), mean ± sd "
           f"over seeds {', '.join(map(str, seeds))}; dense model: "
           f"{_cell([r['dense']['bits_per_byte'] for r in records])}. Every kernel pruned "
           f"layerwise; gmp and pilot+gmp retrain {first['epochs']} epochs (AdamW, peak lr "
           f"{first['learning_rate']:g}, alpha {first['pilot_alpha']:g}; not tuned), Wanda "
           f"uses {first['calibration_windows']} calibration windows.", '',
           '| method | ' + ' | '.join(f'{s:.0%}' for s in sparsities) + ' |',
           '|---|' + '---:|' * len(sparsities)]
  for method in METHODS:
    cells = [_cell(list(by.get((method, s), {}).values())) if (method, s) in by else ''
             for s in sparsities]
    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  diffs = []
  for s in sparsities:
    gmp, pilot = by.get(('gmp', s), {}), by.get(('pilot+gmp', s), {})
    paired = [pilot[k] - gmp[k] for k in sorted(set(gmp) & set(pilot))]
    diffs.append(f'{np.mean(paired):+.3f} (worse on {sum(d > 0 for d in paired)} of '
                 f'{len(paired)})' if paired else '')
  lines.append('| pilot+gmp − gmp, paired | ' + ' | '.join(diffs) + ' |')
  return '\n'.join(lines)
