"""A deployable exported model: one ``.npz`` file that loads without the training code.

The file holds plain arrays only and a JSON manifest (stored as a uint8 array) with, for
every array, its tree path, dtype, shape and SHA-256. :func:`load` reads it with
``numpy.load(allow_pickle=False)``, so a file cannot run code; it refuses a truncated
file, an array whose bytes do not match their hash, and a layout whose indices would read
outside its kernel (:meth:`pcs.sparse.Format.validate`).

Each layer's entry names its format (a key of :data:`pcs.sparse._formats.FORMATS`), its
``kernel_shape``, its ``meta`` (:meth:`pcs.sparse.Format.meta`: N and M, threads) and its
arrays; an exported layer's epilogue (a folded batch norm and its bias, a fused ReLU)
is stored with it. Files of version 1 (before the meta field and epilogues) still load.
"""

import hashlib
from collections.abc import Mapping
import json
import os
import zipfile
from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pcs.core import _boundary as boundary
from pcs.core import _paths as paths
from pcs.sparse import _export
from pcs.sparse import _formats as formats

BFLOAT16 = np.dtype(jnp.bfloat16)
MAGIC = 'pcs.sparse export'
VERSION = 2
READABLE = (1, 2)


def _is_exported_kernel(path: Tuple, exported: _export.Exported) -> bool:
  if not path or path[-1] != 'kernel':
    return False
  layer = path[:-1]
  return layer in exported or (layer[:1] == ('params',) and layer[1:] in exported)


def _merged(trees: List[Dict[str, Any]]) -> Dict[str, Any]:
  """Nested dicts merged into one (the states of one NNX model, one per filter)."""
  out: Dict[str, Any] = {}
  for tree in trees:
    for key, value in tree.items():
      both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
      out[key] = _merged([out[key], value]) if both else value
  return out


def save(file, exported: _export.Exported, variables: Any = None) -> None:
  """Writes ``exported`` and the model's other ``variables`` to ``file`` (a path or a
  binary file object), as a ``.npz`` with a hashed manifest.

  Args:
    file: where to write (``numpy.savez`` appends ``.npz`` to a path without it).
    exported: from :func:`pcs.export`.
    variables: the rest of the model: linen ``variables`` (``{'params': ...,
      'batch_stats': ...}``), or its NNX state: ``nnx.state(model, nnx.Param,
      nnx.BatchStat)`` (the states it returns, one per filter, are saved as one), so
      that a batch norm left unfolded keeps its statistics. The dense kernels of
      exported layers are left out.

  Raises:
    TypeError: for a leaf that is not a numeric array (e.g. an NNX RNG key).
  """
  if not isinstance(exported, _export.Exported):
    raise TypeError(f'`exported` must come from pcs.export; got {type(exported).__name__}.')
  arrays: Dict[str, np.ndarray] = {}

  def add(array) -> Dict[str, Any]:
    if jax.dtypes.issubdtype(getattr(array, 'dtype', np.float32), jax.dtypes.prng_key):
      raise TypeError('pcs.sparse.save stores numeric arrays only; got a PRNG key (an NNX '
                      'RNG stream). For NNX, save nnx.state(model, nnx.Param, nnx.BatchStat).')
    array = np.asarray(array)
    dtype = array.dtype.str
    if array.dtype == BFLOAT16:  # numpy's format has no bfloat16: its bits, as uint16
      array, dtype = array.view(np.uint16), 'bfloat16'
    if array.dtype.kind not in 'biuf':
      raise TypeError(f'pcs.sparse.save stores numeric arrays only; got {array.dtype}. For '
                      'NNX, save nnx.state(model, nnx.Param, nnx.BatchStat).')
    name = f'a{len(arrays)}'
    arrays[name] = np.ascontiguousarray(array)
    return {'array': name, 'dtype': dtype, 'shape': list(array.shape),
            'sha256': hashlib.sha256(arrays[name].tobytes()).hexdigest()}

  if isinstance(variables, (tuple, list)) and variables and all(
      boundary.is_nnx_state(v) for v in variables):
    variables = _merged([boundary.plain(v) for v in variables])
  leaves = []
  flat = jax.tree_util.tree_flatten_with_path(boundary.plain(variables or {}))[0]
  for path, leaf in flat:
    names = tuple(paths.key_name(k) for k in path)
    if not _is_exported_kernel(names, exported):
      leaves.append({'path': list(names), **add(leaf)})
  layers = []
  for path, layer in exported.items():
    entry = {'path': list(path), 'format': layer.name, 'kernel_shape': list(layer.kernel_shape),
             'meta': layer.meta(),
             'arrays': {name: add(array) for name, array in zip(layer.arrays,
                                                               layer.ffi_operands())}}
    epilogue = exported.epilogues.get(path)
    if epilogue is not None:
      entry['epilogue'] = {'norm': None if epilogue.norm is None else list(epilogue.norm),
                           'activation': epilogue.activation,
                           'bias': None if epilogue.bias is None else add(epilogue.bias)}
    layers.append(entry)
  choices = [{**c._asdict(), 'path': list(c.path), 'kernel_shape': list(c.kernel_shape)}
             for c in exported.choices]
  manifest = {'magic': MAGIC, 'version': VERSION, 'variables': leaves, 'layers': layers,
              'choices': choices}
  arrays['manifest'] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
  np.savez(file, **arrays)  # type: ignore[arg-type]  # numpy's stub types allow_pickle


def _nest(leaves) -> Dict:
  tree: Dict = {}
  for path, value in leaves:
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def load(file) -> Tuple[Dict, _export.Exported]:
  """Reads a file written by :func:`save`: ``(variables, exported)`` (what
  :func:`pcs.sparse.load` returns without an NNX model).

  Both are placed on the default device (``jax.Array``s), once: a jitted call takes them
  as they are. ``variables`` is a nested dict (``pcs.sparse.load`` gives it to an NNX
  model).

  Raises:
    ValueError: if the file is truncated, not a pcs export, of another version, or
      altered (an array whose SHA-256 differs from the manifest's, or an invalid layout).
  """
  if (isinstance(file, (str, os.PathLike)) and not os.path.exists(file)
      and os.path.exists(f'{os.fspath(file)}.npz')):
    file = f'{os.fspath(file)}.npz'  # numpy's savez added the suffix that save was not given
  try:
    with np.load(file, allow_pickle=False) as archive:
      contents = {name: archive[name] for name in archive.files}
  except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
    raise ValueError(f'pcs.sparse.load: {file!r} is truncated or not a pcs export '
                     f'({type(error).__name__}: {error}).') from error
  try:
    manifest = json.loads(contents.pop('manifest').tobytes().decode())
  except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ValueError(f'pcs.sparse.load: {file!r} has no readable manifest; it is not a pcs '
                     'export or it was altered.') from error
  if manifest.get('magic') != MAGIC or manifest.get('version') not in READABLE:
    raise ValueError(f'pcs.sparse.load: {file!r} is not a pcs export of version '
                     f'{" or ".join(map(str, READABLE))}.')

  def read(entry) -> np.ndarray:
    array = contents.get(entry['array'])
    half = entry['dtype'] == 'bfloat16'
    stored = np.dtype(np.uint16).str if half else entry['dtype']
    if (array is None or array.dtype.str != stored
        or list(array.shape) != entry['shape']
        or hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        != entry['sha256']):
      raise ValueError(f'pcs.sparse.load: array {entry["array"]} of {file!r} does not match '
                       'its manifest (dtype, shape or SHA-256); the file was altered.')
    return array.view(BFLOAT16) if half else array

  try:
    variables = _nest((tuple(e['path']), read(e)) for e in manifest['variables'])
    layers, epilogues = {}, {}
    for entry in manifest['layers']:
      path = tuple(entry['path'])
      name = f'pcs.sparse.load: layer {paths.layer_name(path)}'
      if entry['format'] not in formats.FORMATS:
        raise ValueError(f'{name} has the format {entry["format"]!r}; this pcs reads '
                         f'{list(formats.FORMATS)}.')
      kind = formats.FORMATS[entry['format']]
      layer = kind.from_arrays(entry['kernel_shape'],
                               {a: read(entry['arrays'][a]) for a in kind.arrays},
                               **(entry['meta'] if 'meta' in entry else _meta_v1(entry)))
      layer.validate(name)
      layers[path] = layer
      if 'epilogue' in entry:
        epilogues[path] = _epilogue(entry['epilogue'], read, layer.features, name)
    choices = tuple(_export.LayerChoice(**{**c, 'path': tuple(c['path']),
                                           'kernel_shape': tuple(c['kernel_shape'])})
                    for c in manifest['choices'])
  except (KeyError, TypeError) as error:
    raise ValueError(f'pcs.sparse.load: the manifest of {file!r} is malformed '
                     f'({type(error).__name__}: {error}); the file was altered.') from error
  return jax.device_put((variables, _export.Exported(layers, choices, epilogues=epilogues)))


def _meta_v1(entry) -> Dict[str, int]:
  """A version-1 entry's meta: ``n_m`` = [N, M] for N:M, ``threads`` when not the pool."""
  meta = {'threads': entry.get('threads', formats.THREADS_POOL)}
  if 'n_m' in entry:
    meta.update(n=entry['n_m'][0], m=entry['n_m'][1])
  return meta


def _epilogue(entry, read, features: int, name: str) -> _export.Epilogue:
  bias = None if entry['bias'] is None else read(entry['bias'])
  if bias is not None and (bias.dtype != np.float32 or bias.shape != (features,)):
    raise ValueError(f'{name}: its folded bias must be float32 of shape ({features},).')
  if entry['activation'] not in (None, 'relu'):
    raise ValueError(f'{name}: unknown fused activation {entry["activation"]!r}.')
  return _export.Epilogue(bias=bias, activation=entry['activation'],
                          norm=None if entry['norm'] is None else tuple(entry['norm']))
