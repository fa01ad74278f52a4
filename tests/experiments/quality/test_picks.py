"""The picked config's table is the record's picks, and the writer rewrites only it."""

import os

from experiments.quality import clipping
from experiments.quality import picks
from experiments.quality import protocol
from experiments.quality import run_record
from experiments.vision.configs import picked
from tests import helpers

PICKED_FILE = os.path.join(helpers.REPO, 'experiments', 'vision', 'configs', 'picked.py')


def test_the_table_is_the_quality_records_picks():
  recorded = run_record.Record(os.path.join(helpers.REPO, 'quality')).rows
  models = sorted({r['model'] for r in recorded.values()})
  assert models == ['cnn1d', 'mlp']
  expected = {}
  for model in models:
    for recipe in protocol.RECIPES:  # every recipe whose tuning has finished, and no other
      setting = clipping.default_setting(recorded, model, recipe)
      if setting is not None:
        expected[(model, recipe)] = {k: v for k, v in setting.items()
                                     if k not in ('model', 'eval_train', 'method', 'schedule')}
  assert expected == picked.PICKED
  assert len(expected) >= 2 * (len(protocol.RECIPES) - 1)  # at most one recipe pending


def test_the_writer_rewrites_only_the_table(tmp_path):
  recorded = run_record.Record(os.path.join(helpers.REPO, 'quality')).rows
  with open(PICKED_FILE) as f:
    text = f.read()
  stale = text.replace("('cnn1d', 'l1'): {", "('cnn1d', 'l1'): {'stale': 1, ")
  assert stale != text
  copy = tmp_path / 'picked.py'
  copy.write_text(stale)
  picks.write(recorded, str(copy))
  assert copy.read_text() == text  # the table back as the record has it, the rest untouched
