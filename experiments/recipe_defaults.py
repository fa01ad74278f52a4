"""Per-recipe defaults for the binary: the values the quality benchmark picked on a
validation split, for the recipe the command line names.

``python -m experiments.sparsify --config.method=pilot --config.schedule=gmp`` with the
default config runs pilot+gmp at its own validation-picked setting for the model
(QUALITY.md), not at ``configs/default.py``'s values, which are one recipe's. Keys given
on the command line win over these; other config files (``configs/recommended.py``,
CIFAR, ImageNet) are documented choices and are left as they are.

A (method, schedule) pair the benchmark did not tune takes the nearest recorded one: the
method's own recipe for its values, the learning rate and the weight decay, and the
schedule's dense recipe (``dense+gmp``, ``dense+imp``) for the schedule's values.
``PICKED`` is checked against ``quality/runs.jsonl`` by tests/test_recipe_defaults.py,
so it cannot drift from the record.
"""

from typing import Collection, Dict, Optional, Tuple

import ml_collections

from experiments import quality_protocol

# (model, recipe) -> the picked overrides (experiments.quality_protocol.recipe_pick, less
# the keys that name the recipe and the model).
PICKED: Dict[Tuple[str, str], Dict[str, object]] = {
    ('cnn1d', 'dense+gmp'): {'learning_rate': 0.4, 'weight_decay': 0.003, 'gmp.end_fraction': 0.7},
    ('cnn1d', 'pilot+gmp'): {'pilot.delta': 1.0, 'learning_rate': 0.2, 'weight_decay': 0.0001,
                             'pilot.alpha': 0.0003},
    ('cnn1d', 'pilot'): {'learning_rate': 0.4, 'weight_decay': 0.0001, 'pilot.delta': 1.0,
                         'pilot.alpha': 0.001},
    ('cnn1d', 'pilot target'): {'pilot.alpha_control': 'target', 'learning_rate': 0.2,
                                'weight_decay': 0.001, 'pilot.delta': 1.3, 'pilot.alpha': 0.001},
    ('cnn1d', 'dense'): {'learning_rate': 0.4, 'weight_decay': 0.003},
    ('cnn1d', 'l1'): {'learning_rate': 0.2, 'weight_decay': 0.001, 'l1.strength': 0.01},
    ('cnn1d', 'str'): {'learning_rate': 0.1, 'weight_decay': 0.001, 'str.weight_decay': 0.01},
    ('cnn1d', 'spred'): {'learning_rate': 0.4, 'weight_decay': 0.001, 'spred.weight_decay': 0.0003},
    ('cnn1d', 'dense+imp'): {'imp.cycles': 3, 'learning_rate': 0.4, 'weight_decay': 0.003,
                             'imp.rewind': 'learning_rate', 'imp.warmup_epochs': 3},
    ('cnn1d', 'pilot+imp'): {'imp.cycles': 3, 'pilot.delta': 1.0, 'learning_rate': 0.2,
                             'weight_decay': 0.001, 'imp.rewind': 'learning_rate',
                             'pilot.alpha': 0.0003, 'imp.warmup_epochs': 3},
    ('cnn1d', 'mirror'): {'pilot.delta': 1.0, 'learning_rate': 0.2, 'weight_decay': 0.001,
                          'pilot.alpha': 0.0001},
    ('cnn1d', 'cs'): {'learning_rate': 0.2, 'weight_decay': 0.001, 'cs.l1_strength': 0.001},
    ('cnn1d', 'powerprop'): {'learning_rate': 0.4, 'weight_decay': 0.003, 'powerprop.power': 1.5},
    ('mlp', 'dense+gmp'): {'learning_rate': 0.4, 'weight_decay': 0.003, 'gmp.end_fraction': 0.9},
    ('mlp', 'pilot+gmp'): {'pilot.delta': 1.0, 'learning_rate': 0.4, 'weight_decay': 0.0001,
                           'pilot.alpha': 0.0003},
    ('mlp', 'pilot'): {'learning_rate': 0.4, 'weight_decay': 0.0001, 'pilot.delta': 1.0,
                       'pilot.alpha': 0.001},
    ('mlp', 'pilot target'): {'pilot.alpha_control': 'target', 'learning_rate': 0.4,
                              'weight_decay': 0.0001, 'pilot.delta': 1.0, 'pilot.alpha': 0.001},
    ('mlp', 'dense'): {'learning_rate': 0.4, 'weight_decay': 0.0001},
    ('mlp', 'l1'): {'learning_rate': 0.4, 'weight_decay': 0.0001, 'l1.strength': 0.01},
    ('mlp', 'str'): {'learning_rate': 0.4, 'weight_decay': 0.003, 'str.weight_decay': 0.003},
    ('mlp', 'spred'): {'learning_rate': 0.4, 'weight_decay': 0.001, 'spred.weight_decay': 0.0003},
    ('mlp', 'dense+imp'): {'imp.cycles': 3, 'learning_rate': 0.4, 'weight_decay': 0.001,
                           'imp.rewind': 'learning_rate', 'imp.warmup_epochs': 5},
    ('mlp', 'pilot+imp'): {'imp.cycles': 3, 'pilot.delta': 1.0, 'learning_rate': 0.4,
                           'weight_decay': 0.0003, 'imp.rewind': 'learning_rate',
                           'pilot.alpha': 0.0003},
    ('mlp', 'mirror'): {'pilot.delta': 1.0, 'learning_rate': 0.4, 'weight_decay': 0.0003,
                        'pilot.alpha': 0.0003},
    ('mlp', 'cs'): {'learning_rate': 0.4, 'weight_decay': 0.0001, 'cs.l1_strength': 0.001},
    ('mlp', 'powerprop'): {'learning_rate': 0.4, 'weight_decay': 0.003, 'powerprop.power': 1.5},
}
DATASET = 'mnist1d'  # the dataset the picks were made on


def recipe_name(method: str, schedule: str) -> str:
  """The quality benchmark's name for a (method, schedule) pair: ``pilot+gmp``, ``l1``."""
  return method if schedule == 'one_shot' else f'{method}+{schedule}'


def defaults_for(model: str, method: str,
                 schedule: str) -> Optional[Tuple[str, Dict[str, object]]]:
  """``(where the values come from, overrides)`` for a recipe on ``model``, or None when
  the benchmark recorded nothing for the model or the method."""
  name = recipe_name(method, schedule)
  if (model, name) in PICKED:
    return f'{name}, as picked', dict(PICKED[(model, name)])
  own = PICKED.get((model, method))
  if own is None:
    return None
  values = dict(own)
  source = f'nearest recorded: {method} for its values'
  if schedule != 'one_shot' and (model, f'dense+{schedule}') in PICKED:
    values.update({k: v for k, v in PICKED[(model, f'dense+{schedule}')].items()
                   if k.startswith(schedule + '.')})
    source += f', dense+{schedule} for the schedule\'s'
  return source, values


def apply(config: ml_collections.ConfigDict, overridden: Collection[str]) -> Optional[str]:
  """Sets the picked values of ``config``'s recipe on every key not in ``overridden``
  (the keys the command line set); the line to print saying what was used, or None
  when nothing was recorded for this dataset, model and method."""
  if config.dataset != DATASET:
    return None
  found = defaults_for(config.model, config.method, config.schedule)
  if found is None:
    return None
  source, values = found
  used = {k: v for k, v in values.items() if k not in overridden}
  quality_protocol.apply(config, used)
  kept = sorted(set(values) - set(used))
  settings = ' '.join(f'{k}={v}' for k, v in used.items()) or 'none'
  line = (f'Recipe defaults for {recipe_name(config.method, config.schedule)} on '
          f'{config.model} (validation-picked, QUALITY.md; {source}): {settings}')
  return line + (f'; kept from the command line: {", ".join(kept)}' if kept else '')
