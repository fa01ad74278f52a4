"""Names of parameter and module paths: a path as the string ``'block/Conv_0/kernel'``."""

from typing import Any


def key_name(key: Any) -> Any:
  """A key of a jax key path (``DictKey``, ``GetAttrKey``, ``SequenceKey``, ...) as the
  dict key, attribute name or index it stands for; a plain key (a string, an int) as
  itself."""
  return getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key)))


def path_name(path: Any) -> str:
  """A path (a jax key path, a tuple of keys, or already a string) as ``'a/0/kernel'``."""
  if isinstance(path, str):
    return path
  return '/'.join(str(key_name(key)) for key in path)


def layer_name(path: Any) -> str:
  """A module path as ``'block/Conv_0'``; ``'(the model)'`` for the empty path (a model
  that is itself the layer, such as an ``nnx.Linear`` exported on its own)."""
  return path_name(path) or '(the model)'
