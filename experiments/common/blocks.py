"""Generated blocks of the Markdown files: figures are written between ``<!-- name -->``
and ``<!-- /name -->`` markers by the code that measures them (the quality report into
README.md, the benchmarks into BENCHMARKS.md and README.md), so that no figure is copied
by hand."""


def replace_between(text: str, name: str, block: str) -> str:
  """``text`` with the lines between ``<!-- name -->`` and ``<!-- /name -->`` set to
  ``block``.

  Raises:
    ValueError: if either marker is missing.
  """
  begin, end = f'<!-- {name} -->', f'<!-- /{name} -->'
  if begin not in text or end not in text:
    raise ValueError(f'{begin} ... {end} markers not found')
  head, rest = text.split(begin, 1)
  _, tail = rest.split(end, 1)
  return f'{head}{begin}\n{block}\n{end}{tail}'


def write_between(path: str, name: str, block: str) -> None:
  """Sets the ``name`` block of the Markdown file ``path`` to ``block``
  (:func:`replace_between`); the file is rewritten only if the block changed."""
  with open(path) as f:
    before = f.read()
  after = replace_between(before, name, block)
  if after != before:
    with open(path, 'w') as f:
      f.write(after)
