r"""Writes the record's picks into the vision binary's picked config.

  python -m experiments.quality.picks --record=quality

``experiments/vision/configs/picked.py`` holds ``PICKED``, each (model, recipe)'s setting
as :func:`experiments.quality.picking.recipe_pick` chooses it from the record, clipped or
at half its learning rate where the clipping stage adopts it
(:func:`experiments.quality.clipping.default_setting`).
This rewrites that table after a quality run moved a pick; the tests check the two agree.
"""

import os
from typing import Dict, Tuple

from absl import app
from absl import flags

from experiments.quality import clipping
from experiments.quality import protocol
from experiments.quality import run_record

NAMING_KEYS = ('model', 'eval_train', 'method', 'schedule')  # in the config's argument
PICKED_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'vision', 'configs',
                           'picked.py')
HEAD = 'PICKED: Dict[Tuple[str, str], Dict[str, object]] = {'
WIDTH = 100  # the line length of the code style (pyproject.toml)

FLAGS = flags.FLAGS


def table(recorded: dict) -> Dict[Tuple[str, str], Dict[str, object]]:
  """(model, recipe) -> the picked values, for every recipe whose tuning has finished."""
  out = {}
  for model in sorted({r['model'] for r in recorded.values()}):
    for recipe in protocol.RECIPES:
      setting = clipping.default_setting(recorded, model, recipe)
      if setting is not None:
        out[(model, recipe)] = {k: v for k, v in setting.items() if k not in NAMING_KEYS}
  return out


def source(picked: Dict[Tuple[str, str], Dict[str, object]]) -> str:
  """``picked`` as the Python literal assigned to ``PICKED``, wrapped at WIDTH."""
  lines = [HEAD]
  for (model, recipe), values in picked.items():
    head = f'    ({model!r}, {recipe!r}): {{'
    items = [f'{k!r}: {v!r}' for k, v in values.items()] or ['']
    line, indent = head, ' ' * len(head)
    for i, item in enumerate(items):
      piece = item + (', ' if i < len(items) - 1 else '},')
      if len(line) + len(piece.rstrip()) > WIDTH and line != head:
        lines.append(line.rstrip())
        line = indent
      line += piece
    lines.append(line.rstrip())
  return '\n'.join(lines + ['}'])


def write(recorded: dict, path: str = PICKED_FILE) -> None:
  """Replaces the ``PICKED`` literal in ``path`` with the record's picks."""
  with open(path) as f:
    text = f.read()
  start = text.index(HEAD)
  end = text.index('\n}\n', start) + len('\n}')
  with open(path, 'w') as f:
    f.write(text[:start] + source(table(recorded)) + text[end:])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  write(run_record.Record(FLAGS.record).rows)
  print(f'{PICKED_FILE}: PICKED rewritten from {FLAGS.record}/runs.jsonl.')


if __name__ == '__main__':
  flags.DEFINE_string('record', 'quality', 'Folder of runs.jsonl.')
  app.run(main)
