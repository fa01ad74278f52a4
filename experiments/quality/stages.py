"""The runs of each stage of the quality benchmark, in order of work.

:func:`plan` lists every run the record lacks: the tuning and confirmation runs
(:mod:`experiments.quality.picking`), then the final runs of each recipe at its pick,
the studies, the robustness and long stages and the defaults stage, each once the
tuning it starts from has finished.
"""

import os
from typing import Dict, Iterator, List, Optional

from experiments.quality import clipping
from experiments.quality import picking
from experiments.quality import protocol
from experiments.quality import seed_statistics


def final_rows(
  model: str,
  recipe: str,
  setting: dict,
  sparsities=protocol.SPARSITIES,
  changes: Optional[dict] = None,
  study: Optional[str] = None,
) -> List[dict]:
  return [
    protocol.row(
      'study' if study else 'final',
      model,
      recipe,
      {
        **setting,
        **(changes or {}),
        'sparsity': s,
        'seed': seed,
        'finetune_epochs': protocol.FINETUNE_EPOCHS,
      },
      study,
    )
    for s in sparsities
    for seed in protocol.SEEDS
  ]


def dense_start(model: str, seed: int, setting: dict) -> dict:
  """The trained dense model that sparsification studies start from."""
  return protocol.row(
    'study',
    model,
    'dense',
    {**setting, 'sparsity': 0.0, 'seed': seed, 'finetune_epochs': 0},
    'dense start',
  )


def sparsify_row(
  model: str, recipe: str, setting: dict, sparsity: float, start: dict, workdir: str
) -> dict:
  """Sparsifying the trained dense model ``start`` with ``recipe`` in SPARSIFY_EPOCHS."""
  out = protocol.row(
    'study',
    model,
    recipe,
    {
      **setting,
      'sparsity': sparsity,
      'seed': start['overrides']['seed'],
      'finetune_epochs': protocol.FINETUNE_EPOCHS,
      'num_epochs': protocol.SPARSIFY_EPOCHS,
      'warmup_epochs': 0,
      'init_checkpoint': os.path.abspath(os.path.join(workdir, start['id'])),
    },
    f'sparsify trained: {recipe}',
  )
  # The id names the start by its id, not by the scratch folder's path.
  out['id'] = protocol.run_id({**out['overrides'], 'init_checkpoint': start['id']})
  return {**out, 'start': start}


def _recipe_rows(recorded: Dict[str, dict], models, stages, recipes) -> Iterator[dict]:
  for recipe in recipes:
    for model in models:
      if 'tune' in stages:
        yield from protocol.tuning_rows(model, recipe)
        yield from picking.confirmation_rows(recorded, model, recipe)
      setting = picking.recipe_pick(recorded, model, recipe)
      if 'final' in stages and setting is not None:
        yield from final_rows(model, recipe, setting)


def plan(recorded: Dict[str, dict], models, stages, workdir: str) -> Iterator[dict]:
  """Every run in order of work, given the ``recorded`` runs by id: final and study runs
  appear once their tuning is done. The recipes in SIDE_BASELINES come after the studies."""
  yield from _recipe_rows(
    recorded, models, stages, [r for r in protocol.RECIPES if r not in protocol.SIDE_BASELINES]
  )
  if 'study' in stages:
    yield from _study_rows(recorded, models, workdir)
  if 'robustness' in stages:
    yield from _robustness_rows(recorded, models)
  if 'long' in stages:
    yield from _long_rows(recorded, models)
  if 'defaults' in stages:
    yield from defaults_rows(recorded, models)
  if 'clipping' in stages:
    yield from clipping.rows(recorded, models)
  yield from _recipe_rows(
    recorded, models, stages, [r for r in protocol.RECIPES if r in protocol.SIDE_BASELINES]
  )


def _aim_study_rows(recorded: Dict[str, dict], model: str, long: bool,
                    recipe: str = protocol.AIMED) -> Iterator[dict]:
  """``recipe`` (the target-aware PILoT, or at LONG_EPOCHS its reference too) tuned at
  each of its targets (:func:`picking.aim_tuning`), then its finals there: the study
  ``protocol.at_target_study(recipe)`` (at LONG_EPOCHS where ``long``, named so)."""
  study = protocol.at_target_study(recipe)
  study = protocol.long_name(study) if long else study
  for sparsity in protocol.AIM_SPARSITIES:
    tuning = picking.aim_tuning(recorded, model, sparsity, long, recipe)
    for runs in tuning.first + tuning.second + tuning.third:
      yield from runs
    for run in (final_rows(model, recipe, tuning.picked, (sparsity,), study=study)
                if tuning.picked is not None else ()):
      # Its own runs, even where the target's pick is the 98% one (then the same config
      # as the recipe's finals): the id also names the study.
      yield {**run, 'id': protocol.run_id({**run['overrides'], 'study': study})}


def _study_rows(recorded: Dict[str, dict], models, workdir: str) -> Iterator[dict]:
  for model in models:
    yield from _aim_study_rows(recorded, model, long=False)
    for study, (recipe, changes, sparsities, _) in protocol.STUDIES.items():
      setting = picking.picked(recorded, model, recipe)
      if setting is not None:
        yield from final_rows(model, recipe, setting, sparsities, changes, study)
    dense = picking.picked(recorded, model, 'dense')
    for recipe in protocol.SPARSIFY_RECIPES if dense is not None else ():
      setting = picking.picked(recorded, model, recipe)
      for seed in protocol.SEEDS if setting is not None else ():
        start = dense_start(model, seed, dense)
        yield start
        if start['id'] in recorded and seed_statistics.stopped_early(recorded[start['id']]):
          continue  # no trained model to start from: the start's own row shows the failure
        for sparsity in (0.95, 0.98):
          yield sparsify_row(model, recipe, setting, sparsity, start, workdir)


def defaults_rows(recorded: Dict[str, dict], models) -> Iterator[dict]:
  """Each of DEFAULTS_RECIPES at its picked config (its pick once its tuning has finished,
  clipped or at half its learning rate where the clipping stage adopts that remedy:
  :func:`clipping.default_setting`), at
  DEFAULTS_SPARSITIES on DEFAULTS_SEEDS, without fine-tuning: the binary's picked configs."""
  for model in models:
    for recipe in protocol.DEFAULTS_RECIPES:
      pick = clipping.default_setting(recorded, model, recipe)
      if pick is None:
        continue
      for sparsity in protocol.DEFAULTS_SPARSITIES:
        for seed in protocol.DEFAULTS_SEEDS:
          yield clipping.defaults_row(model, recipe, pick, sparsity, seed)


def robustness_name(recipe: str, setting: dict) -> str:
  """The study name of the robustness runs at ``setting``."""
  return f'{recipe}, {picking.cycle_warmup(setting)}-epoch cycle warmup'


def _robustness_rows(recorded: Dict[str, dict], models) -> Iterator[dict]:
  """The cycle-warmup tuning, then ROBUSTNESS_SEEDS for each IMP recipe at its pick,
  and for pilot+imp also at the one-epoch warmup the fix replaces. These carry
  ``imp.warmup_epochs`` explicitly, so they are new runs even where the value is the
  default: the first robustness runs, without it, were recorded on another machine, whose
  floating point took other paths (seed 6 of pilot+imp finished there and diverges
  here), and the fix is compared with what it fixes on one machine."""
  for model in models:
    for recipe in protocol.ROBUSTNESS_RECIPES:
      yield from picking.cycle_warmup_rows(recorded, model, recipe)
  for model in models:
    settings = []  # (recipe, setting) in order of work, each pick with its warmup
    for recipe in protocol.ROBUSTNESS_RECIPES:
      pick = picking.cycle_warmup_picked(recorded, model, recipe)
      if pick is not None:
        warmups = {picking.cycle_warmup(pick)} | ({1} if recipe == 'pilot+imp' else set())
        settings += [(recipe, {**pick, 'imp.warmup_epochs': epochs}) for epochs in sorted(warmups)]
    for seed in protocol.ROBUSTNESS_SEEDS:
      for recipe, setting in settings:
        yield protocol.row(
          'robustness',
          model,
          recipe,
          {
            **setting,
            'sparsity': protocol.ROBUSTNESS_SPARSITY,
            'seed': seed,
            'finetune_epochs': protocol.FINETUNE_EPOCHS,
          },
          robustness_name(recipe, setting),
        )


def _long_rows(recorded: Dict[str, dict], models) -> Iterator[dict]:
  for model in (m for m in models if m in protocol.LONG_RECIPES):
    recipes = protocol.LONG_RECIPES[model]
    for recipe in recipes:
      yield from picking.long_tuning_rows(recorded, model, recipe)
    picks = {recipe: picking.long_picked(recorded, model, recipe) for recipe in recipes}
    # Sparsity by sparsity, nearest the tuning sparsity first (98, 99, 95, 90%): a partial
    # stage already ranks every recipe where they differ most.
    for sparsity in sorted(protocol.SPARSITIES, key=lambda s: abs(s - protocol.TUNING_SPARSITY)):
      for recipe, setting in picks.items():
        if setting is not None:
          yield from final_rows(
            model, recipe, setting, (sparsity,), study=protocol.long_name(recipe)
          )
    if protocol.AIMED in recipes:
      yield from _aim_study_rows(recorded, model, long=True)
      yield from _aim_study_rows(recorded, model, long=True, recipe=protocol.AIM_REFERENCE)
