"""QUALITY.md, its plot and README's block, from the quality benchmark's ``runs.jsonl``: the
statistics behind every cell are in :mod:`experiments.quality.seed_statistics`, the targets'
verdicts in :mod:`experiments.quality.targets`.
"""

import os
from typing import Dict, Iterable, List, Optional

import numpy as np

from experiments.charlm.configs import default as charlm_default
from experiments.common import blocks
from experiments.common import failures
from experiments.quality import charlm_protocol
from experiments.quality import charlm_study
from experiments.quality import clipping
from experiments.quality import picking
from experiments.quality import protocol
from experiments.quality import run_record
from experiments.quality import seed_statistics
from experiments.quality import stages
from experiments.quality import targets

# The paper's comparisons (Jacobs & Burkholz, ICLR 2025), each at equal training epochs.
CLAIMS = (('pilot', 'str'), ('pilot', 'spred'), ('pilot+imp', 'dense+imp'))


def accuracy_cell(values: Dict[int, float], stopped=()) -> str:
  """``mean ± sd / median / worst (seed) / failed`` of {seed: accuracy %} and the seeds
  ``stopped`` (:func:`spread`)."""
  if not values and not stopped:
    return ''
  median, worst, seed, count = seed_statistics.spread(values, stopped)
  return f"{seed_statistics.cell(values.values()) or '-'} / {median} / {worst} (s{seed}) / {count}"


def aim_tuning_table(rows: List[dict], model: str, long: bool = False,
                     recipe: str = protocol.AIMED) -> List[str]:
  """The tuning of ``recipe`` (the target-aware PILoT, or its reference AIM_REFERENCE) at
  each of AIM_SPARSITIES (at LONG_EPOCHS where ``long``), every step
  (:func:`picking.aim_tuning`): per setting, its validation accuracy (%) on
  AIM_TUNING_SEEDS (:func:`picking.confirmation`: median, worst seed, failed runs) and what
  was picked; empty before any of those runs."""
  by_id = {row['id']: row for row in rows}
  own = protocol.RECIPES[recipe][1]

  def cell(runs):
    done = [by_id[r['id']] for r in runs if r['id'] in by_id]
    if len(done) < len(runs):
      return f'{len(done)}/{len(runs)} runs'
    c = picking.confirmation(done, 'median')
    return f'{100 * c.value:.1f} / {100 * c.worst:.1f} / {c.failed}'

  names = [', '.join(f'{k}={v}' for k, v in extra.items()) for extra in own]
  lines = ['| target | ' + ' | '.join(names) + ' | then weight_decay='
           + ' / '.join(f'{wd:g}' for wd in protocol.WEIGHT_DECAYS) + ' | then '
           + ' / '.join(names) + ' at that weight_decay | picked |',
           '|---|' + '---|' * len(own) + '---|---|---|']
  for sparsity in protocol.AIM_SPARSITIES:
    first, second, third, pick = picking.aim_tuning(by_id, model, sparsity, long, recipe)
    if not any(r['id'] in by_id for runs in first for r in runs):
      continue
    chosen = 'pending' if pick is None else ', '.join(
        f'{k}={pick[k]}' for k in ('weight_decay', *own[0]) if k in pick)
    decays = ' ; '.join(cell(runs) for runs in second) if second else 'after the first step'
    again = (' ; '.join(cell(runs) for runs in third) if third
             else 'after the second step' if pick is None else 'not moved')
    lines.append(f'| {sparsity:.0%} | ' + ' | '.join(cell(runs) for runs in first)
                 + f' | {decays} | {again} | {chosen} |')
  return lines if len(lines) > 2 else []


def tuned_table(rows: List[dict], recipes, models) -> List[str]:
  """Per model and recipe: the tuning runs done of those planned, the learning rates the
  pick was made over (its :func:`~experiments.quality.protocol.tuning_round`), the pick's
  validation accuracy on seed 0, how it did on the latest finished round of its
  confirmation (:func:`~experiments.quality.protocol.picked_run`: the round's statistic,
  the worst seed and the failed runs) and how far the next round is, and the pick with an
  IMP recipe's tuned cycle warmup (:func:`~experiments.quality.protocol.recipe_pick`,
  what the final runs use)."""
  by_id = {row['id']: row for row in rows}
  lines = ['| model | recipe | runs | learning rates tuned | validation accuracy (98%), '
           'seed 0 | confirmation (validation, 98%) | picked setting |',
           '|---|---|---:|---|---:|---|---|']
  for model in models:
    for recipe in recipes:
      planned = protocol.tuning_rows(model, recipe)
      done = sum(r['id'] in by_id for r in planned)
      learning_rates = picking.tuning_round(by_id, model, recipe)
      if learning_rates is None:
        if done:
          lines.append(f'| {model} | {recipe} | {done}/{len(planned)} | | | | |')
        continue
      best, result = picking.picked_run(by_id, model, recipe)
      confirming = picking.confirmation_rows(by_id, model, recipe)
      done_now = sum(r['id'] in by_id for r in confirming)
      mean = '' if result is None else (
          f'{result.rule} {100 * result.value:.1f}, worst {100 * result.worst:.1f}, '
          f'{result.failed} failed (seeds {result.seeds[0]}-{result.seeds[-1]})')
      if done_now < len(confirming):
        mean += f"{'; ' if mean else ''}seeds 0-{protocol.CONFIRM_SEEDS[-1]}: " \
                f'{done_now}/{len(confirming)} runs'
      shown = {k: v for k, v in picking.recipe_pick(by_id, model, recipe).items()
               if k not in ('model', 'eval_train', 'method', 'schedule')}
      lines.append(f"| {model} | {recipe} | {done}/{len(planned)} | "
                   f"{', '.join(map(str, learning_rates))} | "
                   f"{100 * best['results'].get('validation_accuracy', float('nan')):.1f} | "
                   f"{mean} | {', '.join(f'{k}={v}' for k, v in shown.items())} |")
  return lines


def accuracy_table(found, model: str, names, sparsities, stopped, off=None) -> List[str]:
  """Per name and sparsity, :func:`accuracy_cell` of the finished runs and of the
  ``stopped`` ({(model, name, sparsity): [seeds]}), so a row whose runs all diverged
  still shows; a cell in ``off`` (:func:`off_target`) says the sparsity its runs reached."""
  lines = ['| recipe | ' + ' | '.join(f'{s:.1%}'.replace('.0%', '%') for s in sparsities) + ' |',
           '|---|' + '---:|' * len(sparsities)]
  off = off or {}
  for name in names:
    cells = [accuracy_cell(found.get((model, name, s), {}), stopped.get((model, name, s), ()))
             + (f' (at {100 * off[(model, name, s)]:.1f}%)' if (model, name, s) in off else '')
             for s in sparsities]
    if any(cells):
      lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return lines


def paired_table(found, model: str, pairs, sparsities) -> List[str]:
  lines = ['| compared | ' + ' | '.join(f'{s:.1%}'.replace('.0%', '%') for s in sparsities)
           + ' |', '|---|' + '---|' * len(sparsities)]
  for name, base in pairs:
    cells = [seed_statistics.paired_cell(seed_statistics.paired(found.get((model, name, s), {}),
                                                      found.get((model, base, s), {})))
             for s in sparsities]
    if any(cells):
      lines.append(f'| {name} − {base} | ' + ' | '.join(cells) + ' |')
  return lines


def plot(found, models, names, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
  for ax, model in zip(axes[0], models):
    for name in names:
      points = [(s, np.mean(list(v.values())), np.std(list(v.values()), ddof=1))
                for s in protocol.SPARSITIES
                if len(v := found.get((model, name, s), {})) >= 2]
      if points:
        s, mean, sd = (np.asarray(c) for c in zip(*points))
        ax.errorbar(100 * s, mean, yerr=sd, marker='o', capsize=3, label=name)
    ax.set(title=f'mnist1d {model}: test accuracy after 5 fine-tuning epochs',
           xlabel='sparsity (%)', ylabel='test accuracy (%)')
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


CELL = ('mean ± sd / median / worst seed / failed runs (diverged, at chance, or more than '
        f'{100 * failures.UNDER_MEDIAN:.0f} pp under the median of the cell: '
        '`experiments/common/failures.py`); "(at x%)": a run of the cell ended more than '
        f'{100 * failures.SPARSITY_TOLERANCE:.1f}% off the target sparsity, at x% (the '
        'farthest), so its accuracy is not the target\'s')


def markdown(rows: List[dict]) -> str:
  """The whole of QUALITY.md's generated part."""
  models = [m for m in ('cnn1d', 'mlp') if any(r['model'] == m for r in rows)]
  recipes = list(protocol.RECIPES)
  after, before = seed_statistics.groups(rows, True), seed_statistics.groups(rows, False)
  failed, off = seed_statistics.diverged(rows), seed_statistics.off_target(rows)
  finished = sum(not seed_statistics.stopped_early(r) for r in rows)
  out = [f'Runs recorded: {len(rows)} ({len(rows) - finished} diverged or collapsed). Generated by '
         '`python -m experiments.quality.main` (`make quality`) from `quality/runs.jsonl`.', '',
         '## Targets', '', *targets.verdicts(rows, after, models), '',
         '## Tuning (validation split, 98% sparsity)', '',
         *tuned_table(rows, recipes, models), '']
  for model in models:
    out += [f'## {model}: test accuracy (%) over seeds 0-4', '',
            f'Each cell: {CELL}.', '',
            'After training and pruning to the target (one-shot methods: pruned at the end '
            'with no recovery; gmp and imp: their last step):', '',
            *accuracy_table(before, model, recipes, protocol.SPARSITIES, failed, off), '',
            f'After {protocol.FINETUNE_EPOCHS} more epochs with the masks fixed:', '',
            *accuracy_table(after, model, recipes, protocol.SPARSITIES, failed, off), '',
            f'Paired difference to {targets.REFERENCE} (pp, after fine-tuning; same seeds):', '',
            *paired_table(after, model, [(r, targets.REFERENCE) for r in recipes
                                         if r != targets.REFERENCE], protocol.SPARSITIES), '']
    out += ["The paper's comparisons, each at equal training epochs (pp, after "
            'fine-tuning; same seeds):', '',
            *paired_table(after, model, CLAIMS, protocol.SPARSITIES), '']
    study_sparsities = sorted({s for _, _, ss, _ in protocol.STUDIES.values() for s in ss}
                              | set(protocol.AIM_SPARSITIES))
    aimed = [(protocol.AIM_STUDY, protocol.AIMED), (protocol.AIM_STUDY, targets.AIMED_REFERENCE)]
    aim = aim_tuning_table(rows, model)
    out += [f'### {model}: studies (after fine-tuning)', '',
            *([f'"{protocol.AIM_STUDY}": the target-aware standalone PILoT tuned at each '
               'target instead of at 98% alone, its own values first, then the weight '
               'decay, then its own values again where the weight decay moved '
               f'(validation accuracy %, seeds {", ".join(map(str, protocol.AIM_TUNING_SEEDS))}'
               ': median / worst / failed; the best median with no failed seed is picked):',
               '', *aim, '']
              if aim else []),
            *accuracy_table(after, model, [*protocol.STUDIES, protocol.AIM_STUDY],
                            study_sparsities, failed, off), '',
            'Paired against what each study changes:', '',
            *paired_table(after, model, [(name, base) for name, (_, _, _, base)
                                         in protocol.STUDIES.items()] + aimed,
                          study_sparsities), '']
    long_recipes = protocol.LONG_RECIPES.get(model, ())
    long = [protocol.long_name(r) for r in long_recipes]
    if any(name == n for (m, name, _) in after for n in long if m == model):
      aim_long = protocol.long_name(protocol.AIM_STUDY)
      reference = protocol.long_name(targets.REFERENCE)
      reference_aimed = protocol.long_name(protocol.at_target_study(protocol.AIM_REFERENCE))
      aim = aim_tuning_table(rows, model, long=True)
      aim_reference = aim_tuning_table(rows, model, long=True, recipe=protocol.AIM_REFERENCE)
      out += [f"### {model}: the paper's training length ({protocol.LONG_EPOCHS} epochs)", '',
              'Each recipe re-tuned at this length on the validation split (its own values; '
              'the learning rate and weight decay of its 30-epoch pick over learning rates '
              f"{{{', '.join(map(str, protocol.LONG_ROUND))}}}), test accuracy after "
              'fine-tuning:', '',
              *accuracy_table(after, model, long + [aim_long, reference_aimed],
                              protocol.SPARSITIES, failed, off), '',
              *([f'"{aim_long}": the target-aware standalone PILoT tuned at each target at '
                 'this length, as at 30 epochs (validation accuracy %: median / worst / '
                 'failed):', '', *aim, ''] if aim else []),
              *([f'"{reference_aimed}": its reference tuned at each target the same way, so '
                 'that the two are tuned by the same rule (validation accuracy %: '
                 'median / worst / failed):', '', *aim_reference, '']
                if aim_reference else []),
              f'Paired against {reference}, and against the same recipe at 30 epochs:', '',
              *paired_table(after, model, [(n, reference) for n in long + [aim_long]
                                           if n != reference]
                            + [(aim_long, reference_aimed)]
                            + list(zip(long, long_recipes))
                            + [(aim_long, protocol.AIM_STUDY)], protocol.SPARSITIES), '']
    sparsify = [f'sparsify trained: {r}' for r in protocol.SPARSIFY_RECIPES]
    out += [f'### {model}: sparsifying a trained dense model in {protocol.SPARSIFY_EPOCHS} '
            'epochs (+5 fine-tuning)', '',
            'A seed whose dense start failed (counted in its row) has no sparsifying runs.', '',
            *accuracy_table(after, model, ['dense start'] + sparsify, (0.0, 0.95, 0.98),
                            failed, off), '',
            'Paired against GMP sparsifying the same trained model:', '',
            *paired_table(after, model, [(name, sparsify[0]) for name in sparsify[1:]],
                          (0.95, 0.98)), '']
  return '\n'.join(out)


def protocol_text() -> str:
  """The protocol, stated from the constants the runs were made with."""
  grid = sorted({(g['learning_rate'], g['weight_decay']) for g in protocol.shared_grid()})
  lrs = sorted({lr for lr, _ in grid})
  wds = sorted({wd for _, wd in grid})
  return '\n'.join([
      '# Quality benchmark: mnist1d, every method x schedule tuned alike', '',
      f'- **Tuning** on a validation split (the last {protocol.VALIDATION_FRACTION:.0%} of '
      f'the training split; test is not read) at {protocol.TUNING_SPARSITY:.0%} sparsity, '
      f'seed 0: learning rate {lrs} x weight decay {wds} x each recipe\'s own values '
      '(listed in `experiments/quality/protocol.py`). The best validation accuracy picks '
      'the setting. The learning rates were tuned in rounds, '
      + ' then '.join('{' + ', '.join(map(str, r)) + '}' for r in protocol.LEARNING_RATE_ROUNDS)
      + ', the second because the first left nearly every recipe at its top; a recipe '
      'keeps its earlier pick until the wider round has finished for it, and the tuning '
      'table says which round each pick is from. The tuning runs on seed 0; the '
      f'{protocol.CONFIRM_TOP} best settings then run on more validation seeds, in rounds: '
      + '; then '.join(f"seeds {', '.join(map(str, seeds))}, where the best {rule} over "
                       f'seeds 0-{seeds[-1]} picks' for seeds, rule in protocol.CONFIRM_ROUNDS)
      + ', among the settings with no failed run (diverged, at chance, or more than '
      f'{100 * failures.UNDER_MEDIAN:.0f} pp under the setting\'s median; if each leader '
      'failed somewhere, the best worst seed). In the first round a diverged run counted -1 '
      'in the mean and failures were not looked at. A recipe keeps its previous round\'s '
      'pick (before the first, its seed-0 pick) until the new round has finished for it.',
      f'- **Final runs** train on the whole training split with the picked setting, at '
      f'{", ".join(f"{s:.0%}" for s in protocol.SPARSITIES)} sparsity, seeds '
      f'{protocol.SEEDS[0]}-{protocol.SEEDS[-1]}, then fine-tune '
      f'{protocol.FINETUNE_EPOCHS} epochs with the masks fixed. Test accuracy is reported '
      'as mean ± sample sd, median, worst seed and failed runs over seeds, and paired by '
      'seed against tuned GMP '
      '(`dense+gmp`) with a two-sided paired t-test.',
      '- Every recipe trains 30 epochs with SGD (momentum 0.9), batch 128, a cosine '
      'learning rate after one warmup epoch; `imp` trains 30 epochs dense and then 30 per '
      f'cycle, {targets.training_epochs("dense+imp")} epochs in all, so a PILoT recipe under '
      '`imp` is also judged against `dense+imp`. Each `imp` cycle restarts the schedule '
      'with its own warmup, tuned after the rest of the setting ("Robustness"); the final '
      'runs use its pick.',
      '- Recipes are `method` (one-shot magnitude pruning after training) or '
      '`method+schedule` (`gmp`: the cubic schedule during training; `imp`: 3 cycles of '
      'prune and retrain with weight or learning-rate rewinding).',
      '- **What these figures do not show**: one small dataset (mnist1d: 4000 training '
      'signals) and two small models; a coarse grid tuned on one seed at one sparsity and '
      'reused at the others; 5 seeds resolve differences of about 1 pp at best.'])


def defaults_markdown(rows: List[dict]) -> str:
  """The picked configs on seeds nobody ran (the 'defaults' stage): per model, recipe and
  sparsity, the seeds run, the median, the worst seed and the failed runs (:func:`failed`);
  a recipe passes where no run failed."""
  runs = [r for r in rows if r['stage'] == 'defaults']
  if not runs:
    return ''
  found, stopped = seed_statistics.groups(runs, True), seed_statistics.diverged(runs)
  seeds = protocol.DEFAULTS_SEEDS
  lines = ['## The picked configs on seeds nobody ran', '',
           'Each recipe as `python -m experiments.vision.main '
           '--config=experiments/vision/configs/picked.py:<model>,<recipe>` runs it (its '
           f'validation pick, no fine-tuning), seeds {seeds[0]}-{seeds[-1]}, test accuracy %. '
           'A run failed if it diverged or collapsed, is at chance, or is more than '
           f'{100 * failures.UNDER_MEDIAN:.0f} pp under its cell\'s median.', '',
           '| model | recipe | sparsity | seeds | median | worst seed | failed | verdict |',
           '|---|---|---:|---:|---:|---:|---:|---|']
  for model, name, sparsity in sorted(set(found) | set(stopped)):
    values, gone = found.get((model, name, sparsity), {}), stopped.get((model, name, sparsity), [])
    median, worst, seed, count = seed_statistics.spread(values, gone)
    done = len(values) + len(gone)
    verdict = ('fails' if count else 'trains on every seed' if done == len(seeds)
               else 'pending')
    lines.append(f'| {model} | {name} | {sparsity:.0%} | {done}/{len(seeds)} | {median} | '
                 f'{worst} (s{seed}) | {count} | {verdict} |')
  return '\n'.join(lines)


def clipping_markdown(rows: List[dict]) -> str:
  """The 'clipping' stage: per model and recipe, its pick unclipped, clipped at CLIP_NORM
  and (where clipping does not remove its failures cheaply) at half its learning rate, on
  the validation split and seeds nobody tuned on, with the median, the worst seed and the
  failed runs of each (:func:`experiments.common.failures.failed`), and what the picked
  config takes (:func:`experiments.quality.clipping.verdict`)."""
  found = clipping.cells(rows)
  if not found:
    return ''
  seeds, wide, norm = protocol.DEFAULTS_SEEDS, protocol.WIDE_SEEDS, protocol.CLIP_NORM
  lines = ['## Gradient clipping on seeds nobody ran', '',
           f'Each recipe at its pick, without and with `--config.clip_grad_norm={norm:g}`, '
           f'{protocol.CLIPPING_SPARSITY:.0%}, validation split, seeds {seeds[0]}-{seeds[-1]}, '
           "no fine-tuning; validation accuracy %. A recipe's picked config (`picked.py`, "
           'which the defaults stage runs) keeps its pick where the pick fails on no seed. '
           'Where it fails, the config clips if clipping removes every failed run at a cost '
           f'of at most {clipping.MEDIAN_COST:g} pp of median validation accuracy; otherwise '
           'the pick also runs at half its learning rate, and the config takes whichever '
           'remedy fails on no seed with the higher median. Where the config so chosen '
           'failed on a seed of the defaults stage (test), the same rule decides again on '
           f'seeds {seeds[0]}-{wide[-1]} of the validation split: the pick runs unclipped on '
           f'seeds {wide[0]}-{wide[-1]}, and the other arms run only where the pick fails on '
           'any of the 50 seeds.', '',
           '| model | recipe | unclipped: seeds / median / worst / failed | '
           f'clipped at {norm:g}: seeds / median / worst / failed | '
           'half the learning rate: seeds / median / worst / failed | verdict |',
           '|---|---|---|---|---|---|']

  def summary(values, seeds):
    if not values:
      return '-'
    done = [v for v in values.values() if v is not None]
    bad = failures.failed(values, protocol.NUM_CLASSES)
    worst = min(values, key=lambda s: -1.0 if values[s] is None else values[s])
    shown = 'diverged' if values[worst] is None else f'{100 * values[worst]:.1f}'
    median = f'{100 * float(np.median(done)):.1f}' if done else '-'
    return f'{len(values)}/{len(seeds)} / {median} / {shown} (s{worst}) / {len(bad)}'

  for model, recipe in sorted({(m, r) for m, r, _ in found},
                              key=lambda k: (k[0], protocol.DEFAULTS_RECIPES.index(k[1]))):
    on = clipping.seeds(found, model, recipe)
    arms = [summary(found.get((model, recipe, arm), {}), on)
            for arm in clipping.ARMS]
    lines.append(f'| {model} | {recipe} | {" | ".join(arms)} | '
                 f'{clipping.verdict(found, model, recipe)} |')
  return '\n'.join(lines)


def robustness_markdown(rows: List[dict]) -> str:
  """The recommended recipe and its equal-epoch baseline on seeds nobody tuned on: per
  model and setting (the picked one, then any cycle warmup tuned after it), each recipe's
  median, worst seed, failed runs (:func:`failed`)
  and diverged runs, and the paired difference to the baseline at its current setting
  with a t-test and a Wilcoxon signed-rank test (Wilcoxon, 1945; exact for small
  samples), which an outlier cannot swing as it swings a mean."""
  runs = [r for r in rows if r['stage'] == 'robustness']
  if not runs:
    return ''
  recorded = {r['id']: r for r in rows}
  found, failed = seed_statistics.groups(runs, True), seed_statistics.diverged(runs)
  recipe, baseline = protocol.ROBUSTNESS_RECIPES
  sparsity = protocol.ROBUSTNESS_SPARSITY
  lines = [f'## Robustness: {recipe} and {baseline} on seeds nobody tuned on', '',
           f'Each recipe at its picked setting, {sparsity:.0%} sparsity, seeds '
           f'{protocol.ROBUSTNESS_SEEDS[0]}-{protocol.ROBUSTNESS_SEEDS[-1]} (test accuracy % '
           'after fine-tuning). A run failed if it diverged (stopped on a non-finite loss or '
           f'a collapse), is at chance, or is more than {100 * failures.UNDER_MEDIAN:.0f} pp '
           "under its recipe's median.", '',
           '| model | recipe | seeds | median | worst seed | failed | diverged | paired '
           'difference vs the baseline (t-test; Wilcoxon) |',
           '|---|---|---:|---:|---:|---:|---:|---|']
  for model in sorted({r['model'] for r in runs}):
    names = sorted({r['study'] for r in runs if r['model'] == model},
                   key=lambda n: (not n.startswith(recipe), n))
    current = picking.cycle_warmup_picked(recorded, model, baseline)
    base = stages.robustness_name(baseline, current) if current else ''
    for name in names:
      values = found.get((model, name, sparsity), {})
      seeds = failed.get((model, name, sparsity), [])
      if not values and not seeds:
        continue
      median, worst, seed, count = seed_statistics.spread(values, seeds)
      difference = ''
      result = (seed_statistics.paired(values, found.get((model, base, sparsity), {}))
                if name != base else None)
      if result is not None:
        difference = (f'median {result.median:+.1f}, mean {result.mean:+.1f} ± '
                      f'{result.sd:.1f} pp (p={result.p:.2g}; p={result.wilcoxon_p:.2g}), '
                      f'n={result.n} vs {base}')
      lines.append(f'| {model} | {name} | {len(values) + len(seeds)} | {median} | {worst} '
                   f'(seed {seed}) | {count} | {len(seeds)} | {difference} |')
  tuning = cycle_warmup_table(recorded)
  if tuning:
    lines += ['', '### The warmup of each IMP cycle (validation split, 98%)', '',
              'Each IMP recipe at its picked setting, with `imp.warmup_epochs` (the linear '
              'warmup of the learning rate that each cycle restarts) tuned on seeds '
              f'{protocol.CYCLE_WARMUP_SEEDS[0]}-{protocol.CYCLE_WARMUP_SEEDS[-1]}; the best '
              'mean validation accuracy picks (a diverged run counts -1):', '', *tuning]
  return '\n'.join(lines)


def cycle_warmup_table(recorded: Dict[str, dict]) -> List[str]:
  """Validation accuracy % per seed and the mean, per IMP recipe and cycle warmup."""
  lines = ['| model | recipe | cycle warmup (epochs) | validation accuracy by seed | mean | '
           'picked |', '|---|---|---:|---|---:|---|']
  for model in ('cnn1d', 'mlp'):
    for recipe in protocol.ROBUSTNESS_RECIPES:
      groups = picking.cycle_warmup_groups(recorded, model, recipe)
      if not any(r['id'] in recorded and recorded[r['id']]['study']
                 for _, runs in groups for r in runs):
        continue
      pick = picking.cycle_warmup_picked(recorded, model, recipe)
      for epochs, runs in groups:
        done = [recorded[r['id']] for r in runs if r['id'] in recorded]
        shown = ', '.join('diverged' if 'diverged' in r['results'] else
                          f"{100 * r['results']['validation_accuracy']:.1f}" for r in done)
        mean = (f'{100 * np.mean([picking.validation_accuracy(r) for r in done]):.1f}'
                if len(done) == len(runs) else f'{len(done)}/{len(runs)} runs')
        chosen = pick is not None and picking.cycle_warmup(pick) == epochs
        lines.append(f'| {model} | {recipe} | {epochs} | {shown} | {mean} | '
                     f"{'yes' if chosen else ''} |")
  return lines if len(lines) > 2 else []


def current(rows: Iterable[dict]) -> List[dict]:
  """The recorded ``rows`` that the protocol plans now. The runs of a superseded pick
  (a recipe re-tuned over a wider grid picked another setting) stay in the record but
  leave the tables, so no table mixes two settings of a recipe."""
  rows = list(rows)
  recorded = {r['id']: r for r in rows}
  planned = {r['id'] for r in stages.plan(recorded, protocol.MODELS, protocol.STAGES,
                                            workdir='')}
  return [r for r in rows if r['id'] in planned]


def write(rows: Iterable[dict], folder: str) -> str:
  """Writes ``QUALITY.md`` (next to ``folder``) and ``<folder>/accuracy_vs_sparsity.png``:
  the protocol, ``<folder>/notes.md`` (the findings, written by hand) if present, and
  the tables of ``rows`` (the benchmark passes the :func:`current` ones)."""
  # The robustness runs (seeds 5-24 of the recommended recipe and its baseline) are not
  # mixed into the seeds 0-4 tables; they get a section of their own.
  rows = list(rows)
  robustness, defaults = robustness_markdown(rows), defaults_markdown(rows)
  robust_line = robustness_line(rows)
  defaults_rows = [r for r in rows if r['stage'] == 'defaults']
  clipping = clipping_markdown(rows)
  rows = [r for r in rows if r['stage'] not in ('robustness', 'defaults', 'clipping')]
  os.makedirs(folder, exist_ok=True)
  found = seed_statistics.groups(rows, True)
  models = sorted({r['model'] for r in rows})
  plot(found, models, list(protocol.RECIPES), os.path.join(folder, 'accuracy_vs_sparsity.png'))
  notes = ''
  if os.path.exists(os.path.join(folder, 'notes.md')):
    with open(os.path.join(folder, 'notes.md')) as f:
      notes = f.read().rstrip() + '\n\n'
  text = protocol_text() + '\n\n' + notes + markdown(rows) + '\n'
  if robustness:
    text += '\n' + robustness + '\n'
  if defaults:
    text += '\n' + defaults + '\n'
  if clipping:
    text += '\n' + clipping + '\n'
  lm_protocol = charlm_protocol.markdown(
      run_record.Record(os.path.join(folder, charlm_protocol.RECORD)).rows,
      charlm_protocol.default_base())
  if lm_protocol:
    lm = charlm_default.get_config()
    text += ('\n## A transformer: the quality protocol on the character LM\n\n'
             '`python -m experiments.quality.charlm` (issue 30), one record per run in '
             f'`quality/{charlm_protocol.RECORD}/runs.jsonl`. The byte-level NNX decoder of '
             f'`experiments/charlm` (`configs/default.py`: {lm.num_epochs} epochs of '
             f'{lm.steps_per_epoch} {lm.optimizer} steps), tuned on one validation seed, '
             'unlike the 5-seed pick of the vision recipes.'
             '\n\n' + lm_protocol + '\n')
  charlm = charlm_study.load(folder)
  if charlm:
    text += ('\n## A transformer: sparsifying a trained character LM\n\n'
             '`python -m experiments.charlm.sparsify_trained` (issue 30), one record per seed '
             f'in `quality/{charlm_study.RECORD}`. One model size, a fixed retraining budget and '
             'untuned settings: it shows how the four ways rank here, not which is best '
             'after tuning.\n\n' + charlm_study.markdown(charlm) + '\n')
  root = os.path.dirname(os.path.abspath(folder))
  with open(os.path.join(root, 'QUALITY.md'), 'w') as f:
    f.write(text)
  readme = os.path.join(root, 'README.md')
  if os.path.exists(readme):
    blocks.write_between(readme, 'quality', readme_block(rows, defaults_rows, robust_line))
  return text


def defaults_line(rows: List[dict]) -> str:
  """README's sentence on the 'defaults' stage (:func:`defaults_markdown`): per model, the
  recipes whose picked config failed on a seed nobody ran, with how many runs, and how
  many trained on every seed so far; '' before any such run."""
  runs = [r for r in rows if r['stage'] == 'defaults']
  if not runs:
    return ''
  found, stopped = seed_statistics.groups(runs, True), seed_statistics.diverged(runs)
  seeds = protocol.DEFAULTS_SEEDS
  parts = []
  for model in sorted({m for m, _, _ in set(found) | set(stopped)}):
    failing, clean, pending, waiting = [], [], [], []
    for recipe in protocol.DEFAULTS_RECIPES:
      cells = [(s, found.get((model, f'{recipe} as the binary runs it', s), {}),
                stopped.get((model, f'{recipe} as the binary runs it', s), []))
               for s in protocol.DEFAULTS_SPARSITIES]
      bad = {s: len(seed_statistics.failed(values, gone)) for s, values, gone in cells}
      done = sum(len(values) + len(gone) for _, values, gone in cells)
      if any(bad.values()):
        failing.append(recipe + ' (' + ', '.join(
            f'{count} of {len(values) + len(gone)} at {s:.0%}'
            for (s, values, gone), count in zip(cells, bad.values()) if count) + ')')
      elif done == len(seeds) * len(cells):
        clean.append(recipe)
      else:
        (pending if done else waiting).append(recipe)
    parts.append(f'{model}: failed: {", ".join(failing) or "none"}; trained on every seed: '
                 f'{", ".join(clean) or "none yet"}' +
                 (f'; still running: {", ".join(pending)}' if pending else '') +
                 (f'; not run yet: {", ".join(waiting)}' if waiting else ''))
  return (f'Each recipe\'s picked config (`picked.py:<model>,<recipe>`) on seeds {seeds[0]}-'
          f'{seeds[-1]}, which nobody tuned on, at '
          f'{" and ".join(f"{s:.0%}" for s in protocol.DEFAULTS_SPARSITIES)}: '
          + '. '.join(parts) + ' (QUALITY.md, "The picked configs on seeds nobody ran").')


def robustness_line(rows: List[dict]) -> str:
  """README's sentence on the 'robustness' stage (:func:`robustness_markdown`): per model,
  how many of ROBUSTNESS_SEEDS the recommended recipe and its equal-epoch baseline failed
  on, each at its pick (with its tuned cycle warmup, unclipped); then, where the recipe
  misses the median target over the baseline (:func:`targets.median_paired`), whether it
  failed on fewer of those seeds: issue 32 asks README to say plainly what PILoT's
  advantage is where the median's is missed. '' before the stage has every run."""
  recorded = {r['id']: r for r in rows}
  runs = [r for r in rows if r['stage'] == 'robustness']
  found, stopped = seed_statistics.groups(runs, True), seed_statistics.diverged(runs)
  finals = [r for r in rows if r['stage'] in ('final', 'study')]
  final_found = seed_statistics.groups(finals, True)
  final_stopped = seed_statistics.diverged(finals)
  recipe, baseline = protocol.ROBUSTNESS_RECIPES
  s, seeds = protocol.ROBUSTNESS_SPARSITY, len(protocol.ROBUSTNESS_SEEDS)
  parts, missed = [], []
  for model in sorted({r['model'] for r in runs}):
    failed = {}
    for name in (recipe, baseline):
      setting = picking.cycle_warmup_picked(recorded, model, name)
      key = (model, stages.robustness_name(name, setting), s) if setting else None
      values, gone = found.get(key, {}), stopped.get(key, [])
      if len(values) + len(gone) == seeds:
        failed[name] = len(seed_statistics.failed(values, gone))
    if len(failed) < 2:
      return ''
    parts.append(f'{model}: `{recipe}` on {failed[recipe]}, `{baseline}` on {failed[baseline]}')
    result = targets.median_paired(final_found, final_stopped, model, recipe, baseline)
    if result is not None and result.median < targets.MEDIAN_MARGIN:
      clips = 'clip_grad_norm' in (clipping.default_setting(recorded, model, baseline) or {})
      missed.append((model, failed[recipe] < failed[baseline], clips))
  if not parts:
    return ''
  line = (f'On {seeds} seeds nobody tuned on ({s:.0%}, each recipe at its pick, unclipped; '
          f'QUALITY.md, "Robustness") the runs failed as follows, of {seeds}: '
          + '; '.join(parts) + '.')
  for model, fewer, clips in missed:
    line += (f' On {model} `{recipe}` misses the +{targets.MEDIAN_MARGIN:g} pp by median '
             f'over `{baseline}` at {targets.MEDIAN_SPARSITY:.0%} (above), so '
             + ('its advantage there is robustness, not median accuracy: it failed on '
                'fewer of these seeds' if fewer else
                'it has no advantage there in median accuracy, nor did it fail on fewer of '
                'these seeds')
             + (f' (`{baseline}`\'s picked config clips its gradients, which the next line '
                'judges).' if clips else '.'))
  return line


def readme_block(rows: List[dict], defaults: Optional[List[dict]] = None,
                 robustness: str = '') -> str:
  """README's view of the record, generated with QUALITY.md so that README copies no
  figure by hand: the PILoT recipe recommended on each model, the targets' verdicts,
  ``robustness`` (:func:`robustness_line`) and which picked configs failed on seeds nobody
  ran (``defaults``, the 'defaults' stage's rows)."""
  models = sorted({r['model'] for r in rows})
  picks = ', '.join(f'{m}: `{targets.recommended(rows, m) or "none yet"}`' for m in models)
  line = defaults_line(defaults or [])
  return (f'Recommended PILoT recipe (validation-picked, no failed run): {picks}. The targets, '
          'paired over seeds 0-4 after fine-tuning (from QUALITY.md, which holds every '
          'figure, the failures per cell and the notes on what the figures do not show):\n\n'
          + '\n'.join(targets.verdicts(rows, seed_statistics.groups(rows, True), models))
          + (f'\n\n{robustness}' if robustness else '')
          + (f'\n\n{line}' if line else ''))
