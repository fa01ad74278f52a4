"""A generated block of a Markdown file is replaced between its markers only."""

import pytest

from experiments.common import blocks


def test_readme_block_replaces_only_between_its_markers():
  text = 'a\n<!-- bench -->\nold\n<!-- /bench -->\nb\n'
  assert blocks.replace_between(text, 'bench', 'new') == (
      'a\n<!-- bench -->\nnew\n<!-- /bench -->\nb\n')
  with pytest.raises(ValueError, match='markers not found'):
    blocks.replace_between('no markers', 'bench', 'new')
