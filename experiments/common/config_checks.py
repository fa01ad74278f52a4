"""Checks that fail early and clearly on a bad config, before any file is written.

The pieces every binary uses: the command line's ``--config.<key>`` overrides checked
before absl applies them, typed checks that name the key and what is allowed, the keys
that every training config shares (:func:`validate_training`), dotted overrides
(:func:`override`), and a workdir that refuses a run of another config.
"""

import difflib
import importlib.util
import json
import numbers
import os
import shutil
import sys
from typing import List, Optional, Sequence

import ml_collections

import pcs
from experiments.common import collapse
from experiments.common import optimizers

ON_NONFINITE = ('stop', 'skip')
# Keys that may change between a run and its resumption without changing its results' meaning.
RESUMABLE_CHANGES = ('data_dir', 'num_devices', 'eval_train', 'param_sharding')


def flat_keys(config: ml_collections.ConfigDict, prefix: str = '') -> List[str]:
  keys = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys += flat_keys(value, f'{prefix}{key}.')
    else:
      keys.append(f'{prefix}{key}')
  return keys


def lookup(config, key):
  """The value at the dotted ``key`` (``'pilot.alpha'``)."""
  for part in key.split('.'):
    config = config[part]
  return config


def override(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
  """Sets each dotted key of ``values`` on ``config`` (``{'pilot.alpha': 3e-4}``), as
  ``--config.pilot.alpha=3e-4`` would; returns ``config``."""
  for key, value in values.items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """The config of ``path``, or of ``path:argument`` (``get_config(argument)``), as
  ml_collections' ``config_flags`` reads it."""
  path, _, argument = path.partition(':')
  spec = importlib.util.spec_from_file_location('_pcs_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


def _parses_as(value: str, default) -> bool:
  if isinstance(default, bool):
    return value.lower() in ('true', 'false', '1', '0')
  try:
    if isinstance(default, numbers.Integral):
      int(value)
    elif isinstance(default, numbers.Real):
      float(value)
  except ValueError:
    return False
  return True


def check_overrides(argv: Sequence[str], default_config_path: str) -> Optional[str]:
  """The error message for the first bad ``--config.<key>=<value>`` in ``argv``, or None.

  Unknown keys get the closest valid keys; values that do not parse as the key's
  type (int, float, bool) name the type expected.
  """
  path = default_config_path
  for arg in argv[1:]:
    if arg.startswith('--config='):
      path = arg.split('=', 1)[1]
  if not os.path.exists(path.partition(':')[0]):
    return f'--config={path}: no such config file.'
  try:
    config = load_config_file(path)
  except ValueError as error:  # the config file's own message, e.g. an unknown recipe
    return f'--config={path}: {error}'
  keys = flat_keys(config)
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    key, _, value = arg[len('--config.'):].partition('=')
    if key not in keys:
      close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
      hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ''
      return (f'Unknown config key {key!r} in {arg!r}.{hint} Valid keys: '
              f"{', '.join(keys)}.")
    default = lookup(config, key)
    if value and not _parses_as(value, default):
      kind = type(default).__name__
      return f'{arg!r}: {key} takes a {kind} (default {default!r}); got {value!r}.'
  return None


def exit_on_bad_overrides(default_config_path: str) -> None:
  """Checks ``sys.argv`` before absl parses it; prints the problem and exits with 2."""
  message = check_overrides(sys.argv, default_config_path)
  if message:
    print(f'Error: {message}', file=sys.stderr)
    sys.exit(2)


def need(condition, message):
  """Raises ValueError(message) unless ``condition``."""
  if not condition:
    raise ValueError(message)


def integer(config, key, minimum):
  """``config.<key>`` must be an integer >= ``minimum``."""
  value = lookup(config, key)
  need(isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum,
        f'config.{key} must be an integer >= {minimum}; got {value!r}.')


def real(config, key, low, high=float('inf'), *, open_high=False):
  """``config.<key>`` must be a number in [low, high] (or [low, high))."""
  value = lookup(config, key)
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and low <= value and (
      value < high if open_high else value <= high)
  bound = f'[{low}, {high})' if open_high else f'[{low}, {high}]'
  need(ok, f'config.{key} must be a number in {bound}; got {value!r}.')


def choice(config, key, choices):
  """``config.<key>`` must be one of ``choices``."""
  value = lookup(config, key)
  need(value in choices, f'config.{key} must be one of {tuple(choices)}; got {value!r}.')


def validate_training(config: ml_collections.ConfigDict) -> None:
  """Checks the keys every training config shares (the method, the mask schedule, the
  learning rate and the safeguards); raises ValueError naming the key and what is
  allowed, for the first bad value. Each binary checks its own keys besides."""
  choice(config, 'method', tuple(optimizers.METHODS))
  choice(config, 'schedule', optimizers.SCHEDULES)
  choice(config, 'imp.rewind', pcs.pruning.REWINDS)
  choice(config, 'lr_schedule', optimizers.LR_SCHEDULES)
  choice(config, 'prune_scope', pcs.pruning.SCOPES)
  choice(config, 'on_nonfinite', ON_NONFINITE)
  choice(config, 'on_collapse', collapse.ON_COLLAPSE)
  choice(config, 'pilot.alpha_control', optimizers.ALPHA_CONTROLS)
  real(config, 'sparsity', 0.0, 1.0, open_high=True)
  for key, minimum in (('num_epochs', 1), ('batch_size', 1), ('eval_batch_size', 1),
                       ('warmup_epochs', 0), ('finetune_epochs', 0), ('seed', 0),
                       ('max_nonfinite_steps', 1), ('imp.cycles', 1),
                       ('imp.rewind_epoch', 0), ('imp.warmup_epochs', 0)):
    integer(config, key, minimum)
  for key in ('warmup_epochs', 'imp.warmup_epochs', 'imp.rewind_epoch'):
    need(lookup(config, key) <= config.num_epochs,
         f'config.{key} ({lookup(config, key)}) must be <= config.num_epochs '
         f'({config.num_epochs}).')
  for key in ('learning_rate', 'finetune_learning_rate', 'weight_decay', 'clip_grad_norm'):
    real(config, key, 0.0)
  real(config, 'gmp.begin_fraction', 0.0, 1.0)
  real(config, 'gmp.end_fraction', config.gmp.begin_fraction, 1.0)
  real(config, 'pilot.prune_tolerance', 0.0, 1.0, open_high=True)
  need(config.pilot.alpha_control != 'target' or config.sparsity > 0,
       "config.pilot.alpha_control='target' aims alpha at config.sparsity, which must be > 0; "
       f'got {config.sparsity!r}.')
  # The transforms check their own hyperparameters and name them.
  optimizers.make_optimizer(config, steps_per_epoch=1)


def check_workdir(config: ml_collections.ConfigDict, saved: dict, workdir: str) -> None:
  """Refuses a workdir whose saved config differs from ``config`` (results would mix)."""
  changes = _changes(config, saved)
  if changes:
    raise ValueError(f'{workdir} holds a run with a different config ({changes}). Use another '
                     '--workdir, or delete this one to start over; nothing was changed.')


def drop_stale_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Deletes an unfinished run's workdir that was written with another config.

  For the benchmark's scratch folders, whose finished runs live in the record: a run left
  unfinished by an older pcs restarts instead of mixing two configs.
  """
  saved = os.path.join(workdir, 'config.json')
  if not os.path.exists(saved):
    return
  with open(saved) as f:
    changes = _changes(config, json.load(f))
  if changes:
    print(f'Restarting the unfinished run in {workdir}: its config differs ({changes}).',
          flush=True)
    shutil.rmtree(workdir)


def _changes(config: ml_collections.ConfigDict, saved: dict) -> str:
  """The keys, outside RESUMABLE_CHANGES, where ``saved`` differs from ``config``."""
  before, now = flat_dict(saved), flat_dict(config.to_dict())
  differing = sorted(key for key in set(before) | set(now)
                     if key.split('.')[0] not in RESUMABLE_CHANGES
                     and before.get(key) != now.get(key))
  return ', '.join(f'{k}: {before.get(k)!r} -> {now.get(k)!r}' for k in differing)


def flat_dict(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat_dict(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return out
