"""A generated block of a Markdown file is replaced between its markers only."""

import pytest

from experiments.common import blocks


def test_readme_block_replaces_only_between_its_markers():
  text = 'a\n<!-- bench -->\nold\n<!-- /bench -->\nb\n'
  assert blocks.replace_between(text, 'bench', 'new') == (
      'a\n<!-- bench -->\nnew\n<!-- /bench -->\nb\n')
  with pytest.raises(ValueError, match='markers not found'):
    blocks.replace_between('no markers', 'bench', 'new')


def test_a_file_block_is_rewritten_only_between_its_markers(tmp_path):
  path = tmp_path / 'README.md'
  path.write_text('a\n<!-- bench -->\nold\n<!-- /bench -->\nb\n')
  blocks.write_between(str(path), 'bench', 'new')
  assert path.read_text() == 'a\n<!-- bench -->\nnew\n<!-- /bench -->\nb\n'
  with pytest.raises(ValueError, match='markers not found'):
    blocks.write_between(str(path), 'demo', 'new')
  assert path.read_text() == 'a\n<!-- bench -->\nnew\n<!-- /bench -->\nb\n'  # left whole
