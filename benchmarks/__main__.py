"""``make bench``: runs every benchmark in one process and rewrites BENCHMARKS.md.

  python -m benchmarks [--repeats=20] [--conv_repeats=10] [--size=2048]
      [--inference_repeats=20] [--recovery_repeats=3] [--recovery_dims=1000,10000,100000]
      [--output=BENCHMARKS.md] [--readme=README.md]

It also rewrites the training-cost table between README.md's ``<!-- bench -->`` markers.
"""

import time

from absl import app
from absl import flags
from benchmarks import machine
from experiments.common.blocks import write_between
from benchmarks import sparse_inference
from benchmarks import sparse_recovery
from benchmarks import step_overhead
from benchmarks import update_cost

flags.DEFINE_string('output', 'BENCHMARKS.md', 'Where to write the report.')
flags.DEFINE_string('readme', 'README.md', 'Whose training-cost table to rewrite.')
FLAGS = flags.FLAGS


def _verdict(value, bound):
  return 'met' if value <= bound else f'missed by {value - bound:.2f}x'


def training_targets(step_rows) -> list:
  """The fast-update targets, met or missed, for every model and inner optimizer."""
  lines = []
  for r in step_rows:
    if r['variant'] == 'mirror':
      lines.append(f"| mirror <= 1.05x bare: {r['model']}, {r['inner']} | {r['ratio']:.3f}x | "
                   f"{_verdict(r['ratio'], 1.05)} |")
    if r['variant'] == 'pilot':
      bound = 1.02 if r['model'] == 'ResNet-20' else 1.15
      lines.append(f"| pilot <= {bound:.2f}x bare: {r['model']}, {r['inner']} | "
                   f"{r['ratio']:.3f}x | {_verdict(r['ratio'], bound)} |")
  state = {(r['model'], r['inner'], r['variant']): r['state'] for r in step_rows}
  excess = max(state[(m, i, 'mirror')] - state[(m, i, 'bare')] for m, i, v in state if v == 'bare')
  lines.append(f"| mirror state = bare state | at most {excess:+.3f}x params over bare | "
               f"{'met' if excess <= 0.01 else 'missed'} |")
  return lines


def targets(step_rows, recovery_rows) -> str:
  """The targets of the pcs roadmap, met or missed (and by how much), from this run's rows
  (sparse inference's are with its recorded runs, one per machine)."""
  lines = ['## Targets', '', '| target | this run | verdict |', '|---|---|---|']
  lines += training_targets(step_rows)
  for d in sorted({r['d'] for r in recovery_rows if r['d'] >= 10_000}):
    pcs_best = sparse_recovery.fastest(recovery_rows, d, prefix='pcs')
    highs = [r for r in recovery_rows if r['d'] == d and r['solver'].startswith('HiGHS')]
    highs_best = sparse_recovery.fastest(recovery_rows, d, prefix='HiGHS')
    label = f'| pcs reaches basis pursuit faster than HiGHS, d = {d:.0e} |'
    if pcs_best is None:
      lines.append(label + ' pcs did not reach it | missed |')
    elif highs_best is None:
      slowest = max(r['time_s'] for r in highs)
      lines.append(label + f" {pcs_best['solver']} {pcs_best['time_s']:.3g} s; HiGHS not solved "
                   f'in {slowest:.0f} s | met |')
    else:
      ratio = pcs_best['time_s'] / highs_best['time_s']
      lines.append(label + f" {pcs_best['solver']} {pcs_best['time_s']:.3g} s vs "
                   f"{highs_best['solver']} {highs_best['time_s']:.3g} s ({ratio:.2g}x) | "
                   f"{'met' if ratio < 1 else f'missed: {ratio:.2g}x slower'} |")
  return '\n'.join(lines)


def why(update_rows, size: int) -> str:
  """Why the training-cost targets are missed on this CPU, with this run's traffic counts."""
  row = {(r['inner'], r['variant']): r for r in update_rows}
  bare, pilot, mirror, written = (row[('momentum', v)] for v in ('bare', 'pilot', 'mirror',
                                                                  'pilot written out'))
  adam = row[('adam', 'pilot')]
  weights = f'{2 * size**2 / 1e6:.1f}M'
  return f"""Why the training-cost misses, from the update's compiled HLO
(`benchmarks/update_cost.py`, {weights} weights):

- **pilot moves {pilot['passes']:.0f} parameter-sized arrays per step around SGD with momentum,
  where the method needs {pilot['minimum']:.0f}** (read g, x, m and the two traces; write x, m and
  the traces) and the bare optimizer moves {bare['passes']:.0f}; around Adam {adam['passes']:.0f}
  against {adam['minimum']:.0f}. XLA:CPU emits one loop per output array and no multi-output
  (sibling) fusion, so every output (the trace of m, the trace of w, m and x) re-reads its
  inputs in its own loop. w = x / m is read by three of them, and a division is one of the
  operations XLA will not duplicate into several loops, so w is written once and read back
  ({pilot['temp_mib']:.0f} MiB of temporaries). With the state donated, XLA also copies m
  ({pilot['copies']} array copies, one per kernel), because the loops that read the old m are
  not ordered before the one that writes the new m into its buffer. The wrapper adds none of
  this: the same update written out in jnp with no wrapper (`pilot written out`, tested to
  give pilot's weights) compiles to {written['passes']:.0f} passes, {written['fusions']} loops and
  {written['copies']} copies against pilot's {pilot['passes']:.0f}, {pilot['fusions']} and
  {pilot['copies']}; what is left is XLA:CPU's. GPU and TPU backends fuse
  sibling loops, which is where the one-pass update exists; no GPU was lent for these runs, so
  that is not measured here.
- **mirror moves exactly what bare moves ({mirror['passes']:.0f} arrays,
  {mirror['temp_mib']:.0f} MiB of temporaries, the bare optimizer's state)**, since
  `pcs.implicit.mirror_step` has no branch and no transcendental function per weight. What it
  still costs on this CPU is arithmetic: about 110 element-wise operations per weight in its
  jaxpr (Taylor polynomials of sinh and cosh, a square root, one division, the power-of-two
  scaling and the selects), where the bare update does a handful and is bound by memory; the
  update takes {mirror['ms']:.1f} ms against {bare['ms']:.1f} ms ({mirror['ratio']:.1f}x).
  Accelerators do an order of magnitude more arithmetic per byte moved, so there the same loop
  is bound by memory.
  Around AdamW (weight decay reads the params) mirror also forms z = arcsinh(x / a) / 2 for the
  inner optimizer, with its transcendental functions.
- Sparse products in `jax.experimental.sparse` lower to gathers and scatters on CPU, while
  dense products and convolutions use oneDNN; pcs's own kernels (`csrc/`)
  replace them in `pcs.export`, and take convolutions directly, without im2col patches.
"""


def readme_block(step_rows) -> str:
  """The README's training-cost table: pilot and mirror against bare at every size."""
  lines = ['| model | inner | bare step | pilot / bare | mirror / bare | state / params '
           '(bare, pilot, mirror) |', '|---|---|---:|---:|---:|---:|']
  by = {(r['model'], r['inner'], r['variant']): r for r in step_rows}
  for model, inner in dict.fromkeys((r['model'], r['inner']) for r in step_rows):
    bare, pilot, mirror = (by[(model, inner, v)] for v in ('bare', 'pilot', 'mirror'))
    lines.append(f"| {model} | {inner} | {bare['ms']:.1f} ms | {pilot['ratio']:.2f}x | "
                 f"{mirror['ratio']:.2f}x | {bare['state']:.2f}x, {pilot['state']:.2f}x, "
                 f"{mirror['state']:.2f}x |")
  return '\n'.join(lines)


def main(argv):
  del argv
  start = time.time()
  step_rows = step_overhead.run_all(FLAGS.repeats, FLAGS.conv_repeats)
  update_rows = update_cost.run(FLAGS.size, FLAGS.update_repeats)
  sparse_inference.record(sparse_inference.run(FLAGS.inference_repeats), FLAGS.sparse_record)
  recovery_rows = sparse_recovery.run([int(d) for d in FLAGS.recovery_dims],
                                      FLAGS.recovery_repeats)
  machine_line, seconds = machine.describe(), time.time() - start
  text = f"""# pcs benchmarks

Machine: {machine_line}. Regenerate with `make bench` ({seconds:.0f} s for this run).
Every comparison is measured in one run, interleaved (variant A, B, C, A, B, C, ...; sparse
inference in rounds of random order), and reported as medians and ratios; absolute times are
context only.

## Training cost (`benchmarks/step_overhead.py`)

Jitted train-step time relative to the bare inner optimizer (SGD with momentum 0.9, or Adam),
optimizer-state bytes relative to parameter bytes, and the compiled step's temporary bytes
(`memory_analysis()`) with their excess over the bare step's. MLPs at batch {FLAGS.mlp_batch},
ResNet-20 at batch {FLAGS.conv_batch} on 32x32x3; {FLAGS.repeats} timed steps per variant on the
MLPs and {FLAGS.conv_repeats} on ResNet-20. Targets: mirror <= 1.05x at every size with the bare
optimizer's state; pilot <= 1.15x on every MLP and <= 1.02x on ResNet-20.
A ResNet-20 step takes about 0.7 s on this machine and its ratios move by a few percent
between runs.

{step_overhead.markdown(step_rows)}

## The update alone (`benchmarks/update_cost.py`)

{update_cost.__doc__.split(chr(10) + chr(10), 1)[1].rsplit(chr(10) + chr(10), 1)[0]}

{update_cost.markdown(update_rows)}

## Sparse inference (`benchmarks/sparse_inference.py`)

{sparse_inference.__doc__.split(chr(10) + chr(10), 1)[1].rsplit(chr(10) + chr(10), 1)[0]}

Outputs agree with the dense model (checked here and in tests/pcs/sparse/test_sparse_models.py).

<!-- sparse-runs -->
{sparse_inference.runs_markdown(FLAGS.sparse_record)}
<!-- /sparse-runs -->

## Sparse recovery (`benchmarks/sparse_recovery.py`)

{sparse_recovery.SUMMARY}

{sparse_recovery.markdown(recovery_rows)}

{targets(step_rows, recovery_rows)}

{why(update_rows, FLAGS.size)}"""
  with open(FLAGS.output, 'w') as f:
    f.write(text)
  write_between(FLAGS.readme, 'bench',
                f'{machine_line}; from the `make bench` run that wrote BENCHMARKS.md.\n\n'
                f'{readme_block(step_rows)}')
  print(text)


if __name__ == '__main__':
  app.run(main)
