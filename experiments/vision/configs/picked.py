r"""Each recipe at the values the quality benchmark picked for it on a validation split.

  python -m experiments.vision.main --workdir=runs/pilotgmp98 \
      --config=experiments/vision/configs/picked.py:cnn1d,pilot+gmp --config.sparsity=0.98

The argument names the model and the recipe, ``<model>,<method>[+<schedule>]``
(``mlp,l1``, ``cnn1d,dense+imp``): the config is ``default.py``'s with that model, method
and schedule and the values the benchmark picked for them on mnist1d (QUALITY.md's
tuning table), with a remedy where QUALITY.md's clipping table adopts one for a recipe
that failed on seeds nobody tuned on: gradient clipping, or half the learning rate, the
one that trains on all of them (clipping first where it costs at most 1 pp of median
validation accuracy). Keys given on the command line win, as with any config file.
``default.py`` itself is one recipe's values and is used as written.

A (method, schedule) pair the benchmark did not tune takes the nearest recorded one: the
method's own recipe for its values, the learning rate and the weight decay, and the
schedule's dense recipe (``dense+gmp``, ``dense+imp``) for the schedule's values.
``PICKED`` is written from ``quality/runs.jsonl`` by ``python -m
experiments.quality.picks`` and checked against it by the tests, so it cannot drift from
the record.
"""

from typing import Dict, Optional, Tuple

import ml_collections

from experiments.common import config_checks
from experiments.vision.configs import default

# (model, recipe) -> the picked overrides (experiments.quality.clipping.default_setting: the
# validation pick, clipped or at half its learning rate where the clipping stage adopts it;
# less the keys that name the recipe and the model).
PICKED: Dict[Tuple[str, str], Dict[str, object]] = {
    ('cnn1d', 'dense+gmp'): {'learning_rate': 0.4, 'weight_decay': 0.003, 'gmp.end_fraction': 0.7,
                             'clip_grad_norm': 1.0},
    ('cnn1d', 'pilot+gmp'): {'pilot.delta': 1.0, 'learning_rate': 0.2, 'weight_decay': 0.0001,
                             'pilot.alpha': 0.0003},
    ('cnn1d', 'pilot'): {'learning_rate': 0.4, 'weight_decay': 0.0001, 'pilot.delta': 1.0,
                         'pilot.alpha': 0.001},
    ('cnn1d', 'pilot target'): {'pilot.alpha_control': 'target', 'pilot.prune_tolerance': 0.01,
                                'learning_rate': 0.2, 'weight_decay': 0.001, 'pilot.delta': 1.3,
                                'pilot.alpha': 0.001},
    ('cnn1d', 'dense'): {'learning_rate': 0.4, 'weight_decay': 0.001, 'clip_grad_norm': 1.0},
    ('cnn1d', 'l1'): {'learning_rate': 0.2, 'weight_decay': 0.001, 'l1.strength': 0.01},
    ('cnn1d', 'str'): {'learning_rate': 0.1, 'weight_decay': 0.001, 'str.weight_decay': 0.01},
    ('cnn1d', 'spred'): {'learning_rate': 0.4, 'weight_decay': 0.001, 'spred.weight_decay': 0.0003},
    ('cnn1d', 'dense+imp'): {'imp.cycles': 3, 'learning_rate': 0.4, 'weight_decay': 0.001,
                             'imp.rewind': 'learning_rate', 'imp.warmup_epochs': 5,
                             'clip_grad_norm': 1.0},
    ('cnn1d', 'pilot+imp'): {'imp.cycles': 3, 'pilot.delta': 1.0, 'learning_rate': 0.2,
                             'weight_decay': 0.001, 'imp.rewind': 'learning_rate',
                             'pilot.alpha': 0.0003, 'imp.warmup_epochs': 3},
    ('cnn1d', 'mirror'): {'pilot.delta': 1.0, 'learning_rate': 0.2, 'weight_decay': 0.003,
                          'pilot.alpha': 0.001},
    ('cnn1d', 'cs'): {'learning_rate': 0.2, 'weight_decay': 0.001, 'cs.l1_strength': 0.001},
    ('cnn1d', 'powerprop'): {'learning_rate': 0.4, 'weight_decay': 0.003, 'powerprop.power': 1.5},
    ('mlp', 'dense+gmp'): {'learning_rate': 0.4, 'weight_decay': 0.003, 'gmp.end_fraction': 0.9},
    ('mlp', 'pilot+gmp'): {'pilot.delta': 1.0, 'learning_rate': 0.4, 'weight_decay': 0.0001,
                           'pilot.alpha': 0.0003},
    ('mlp', 'pilot'): {'learning_rate': 0.4, 'weight_decay': 0.0001, 'pilot.delta': 1.0,
                       'pilot.alpha': 0.001},
    ('mlp', 'pilot target'): {'pilot.alpha_control': 'target', 'pilot.prune_tolerance': 0.01,
                              'learning_rate': 0.2, 'weight_decay': 0.003, 'pilot.delta': 1.3,
                              'pilot.alpha': 0.0001},
    ('mlp', 'dense'): {'learning_rate': 0.4, 'weight_decay': 0.0001},
    ('mlp', 'l1'): {'learning_rate': 0.4, 'weight_decay': 0.0003, 'l1.strength': 0.01},
    ('mlp', 'str'): {'learning_rate': 0.4, 'weight_decay': 0.003, 'str.weight_decay': 0.003},
    ('mlp', 'spred'): {'learning_rate': 0.4, 'weight_decay': 0.001, 'spred.weight_decay': 0.0003},
    ('mlp', 'dense+imp'): {'imp.cycles': 3, 'learning_rate': 0.4, 'weight_decay': 0.001,
                           'imp.rewind': 'learning_rate', 'imp.warmup_epochs': 5},
    ('mlp', 'pilot+imp'): {'imp.cycles': 3, 'pilot.delta': 1.0, 'learning_rate': 0.4,
                           'weight_decay': 0.0003, 'imp.rewind': 'learning_rate',
                           'pilot.alpha': 0.0003},
    ('mlp', 'mirror'): {'pilot.delta': 1.0, 'learning_rate': 0.4, 'weight_decay': 0.0003,
                        'pilot.alpha': 0.0003},
    ('mlp', 'cs'): {'learning_rate': 0.2, 'weight_decay': 0.0003, 'cs.l1_strength': 0.001},
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


def get_config(argument: str) -> ml_collections.ConfigDict:
  """``default.py``'s config for ``'<model>,<recipe>'`` at the recipe's picked values."""
  model, _, recipe = argument.partition(',')
  method, _, schedule = recipe.partition('+')
  schedule = schedule or 'one_shot'
  models = sorted({m for m, _ in PICKED})
  if model not in models:
    raise ValueError(f'picked.py:<model>,<recipe>: the model must be one of {models}; '
                     f'got {model!r}.')
  found = defaults_for(model, method, schedule)
  if found is None:
    recipes = sorted({r for m, r in PICKED if m == model})
    raise ValueError(f'picked.py:{model},<recipe>: nothing was picked for {recipe!r} on '
                     f'{model}; recipes: {recipes} (a method of these under another '
                     'schedule takes the nearest picks).')
  config = default.get_config()
  config.model, config.method, config.schedule = model, method, schedule
  return config_checks.override(config, found[1])
