"""A deployable exported model: one ``.npz`` file that loads without the training code.

The file holds plain arrays only and a JSON manifest (stored as a uint8 array) with, for
every array, its tree path, dtype, shape and SHA-256. :func:`load` reads it with
``numpy.load(allow_pickle=False)``, so a file cannot run code; it refuses a truncated
file, an array whose bytes do not match their hash, and a layout whose indices would read
outside its kernel (:func:`pcs.sparse._formats.validate`).
"""

import hashlib
import json
import zipfile
from typing import Any, Dict, Tuple

import jax
import numpy as np

from pcs.core import _boundary as boundary
from pcs.sparse import _export
from pcs.sparse import _formats as formats

MAGIC = 'pcs.sparse export'
VERSION = 1
_ARRAYS = {'csr': ('values', 'indices', 'indptr'), 'n_m': ('values', 'positions')}


def _is_exported_kernel(path: Tuple, exported: _export.Exported) -> bool:
  if not path or path[-1] != 'kernel':
    return False
  layer = path[:-1]
  return layer in exported or (layer[:1] == ('params',) and layer[1:] in exported)


def save(file, exported: _export.Exported, variables: Any = None) -> None:
  """Writes ``exported`` and the model's other ``variables`` to ``file`` (a path or a
  binary file object), as a ``.npz`` with a hashed manifest.

  Args:
    file: where to write (``numpy.savez`` appends ``.npz`` to a path without it).
    exported: from :func:`pcs.export` or :func:`pcs.sparse.nnx.export`.
    variables: the rest of the model: linen ``variables`` (``{'params': ...,
      'batch_stats': ...}``) or an NNX state such as ``nnx.state(model, nnx.Param,
      nnx.BatchStat)``. The dense kernels of exported layers are left out.

  Raises:
    TypeError: for a leaf that is not a numeric array (e.g. an NNX RNG key).
  """
  if not isinstance(exported, _export.Exported):
    raise TypeError(f'`exported` must come from pcs.export; got {type(exported).__name__}.')
  arrays: Dict[str, np.ndarray] = {}

  def add(array) -> Dict[str, Any]:
    array = np.asarray(array)
    if array.dtype.kind not in 'biuf':
      raise TypeError(f'pcs.sparse.save stores numeric arrays only; got {array.dtype}. For '
                      'NNX, save nnx.state(model, nnx.Param, nnx.BatchStat).')
    name = f'a{len(arrays)}'
    arrays[name] = np.ascontiguousarray(array)
    return {'array': name, 'dtype': array.dtype.str, 'shape': list(array.shape),
            'sha256': hashlib.sha256(arrays[name].tobytes()).hexdigest()}

  leaves = []
  flat = jax.tree_util.tree_flatten_with_path(boundary.plain(variables or {}))[0]
  for path, leaf in flat:
    names = tuple(_export.key_name(k) for k in path)
    if not _is_exported_kernel(names, exported):
      leaves.append({'path': list(names), **add(leaf)})
  layers = []
  for path, layer in exported.items():
    kind = 'csr' if isinstance(layer, formats.CSR) else 'n_m'
    entry = {'path': list(path), 'format': kind, 'kernel_shape': list(layer.kernel_shape),
             'arrays': {name: add(getattr(layer, name)) for name in _ARRAYS[kind]}}
    if kind == 'n_m':
      entry['n_m'] = [layer.n, layer.m]
    if layer.threads != formats.THREADS_POOL:
      entry['threads'] = layer.threads
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
  """Reads a file written by :func:`save`: ``(variables, exported)``.

  Both are placed on the default device (``jax.Array``s), once: a jitted call takes them
  as they are. ``variables`` is a nested dict (for linen, ``exported.bind(model,
  variables)`` or :func:`pcs.sparse_apply`; for NNX use :func:`pcs.sparse.nnx.load`).

  Raises:
    ValueError: if the file is truncated, not a pcs export, of another version, or
      altered (an array whose SHA-256 differs from the manifest's, or an invalid layout).
  """
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
  if manifest.get('magic') != MAGIC or manifest.get('version') != VERSION:
    raise ValueError(f'pcs.sparse.load: {file!r} is not a pcs export of version {VERSION}.')

  def read(entry) -> np.ndarray:
    array = contents.get(entry['array'])
    if (array is None or array.dtype.str != entry['dtype']
        or list(array.shape) != entry['shape']
        or hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        != entry['sha256']):
      raise ValueError(f'pcs.sparse.load: array {entry["array"]} of {file!r} does not match '
                       'its manifest (dtype, shape or SHA-256); the file was altered.')
    return array

  try:
    variables = _nest((tuple(e['path']), read(e)) for e in manifest['variables'])
    layers = {}
    for entry in manifest['layers']:
      path = tuple(entry['path'])
      arrays: Dict[str, Any] = {name: read(entry['arrays'][name])
                                for name in _ARRAYS[entry['format']]}
      shape = tuple(entry['kernel_shape'])
      layer: Any
      threads = entry.get('threads', formats.THREADS_POOL)
      if entry['format'] == 'csr':
        layer = formats.CSR(kernel_shape=shape, threads=threads, **arrays)
      else:
        layer = formats.NM(kernel_shape=shape, n=int(entry['n_m'][0]),
                           m=int(entry['n_m'][1]), threads=threads, **arrays)
      formats.validate(layer, f'pcs.sparse.load: layer {"/".join(map(str, path))}')
      layers[path] = layer
    choices = tuple(_export.LayerChoice(**{**c, 'path': tuple(c['path']),
                                           'kernel_shape': tuple(c['kernel_shape'])})
                    for c in manifest['choices'])
  except (KeyError, TypeError) as error:
    raise ValueError(f'pcs.sparse.load: the manifest of {file!r} is malformed '
                     f'({type(error).__name__}: {error}); the file was altered.') from error
  return jax.device_put((variables, _export.Exported(layers, choices)))
