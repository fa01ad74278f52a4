"""Builds pcs's compiled sparse kernels (csrc/) against the FFI headers of the jaxlib that
pyproject.toml pins for the build (the version constraints.txt installs; a handler built
against newer headers than the runtime jaxlib fails at call time). The extension is
optional: without a C++ compiler pcs installs and runs the pure-JAX reference instead."""

import importlib.util
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildWithFFIHeaders(build_ext):
  """build_ext with jaxlib's ``include/`` (where ``xla/ffi/api/ffi.h`` lives) on the path."""

  def build_extensions(self):
    spec = importlib.util.find_spec('jaxlib')
    if spec is None or not spec.submodule_search_locations:
      raise RuntimeError('Building pcs needs jaxlib for its FFI headers (pyproject.toml '
                         'lists it in build-system.requires).')
    include = os.path.join(list(spec.submodule_search_locations)[0], 'include')
    for extension in self.extensions:
      extension.include_dirs.append(include)
    super().build_extensions()


setup(
    ext_modules=[Extension('pcs.sparse._sparse_kernels', ['csrc/sparse_kernels.cc'],
                           depends=[os.path.join('csrc', name) for name in (
                               'common.h', 'parallel.h', 'rows.h', 'tiles.h', 'product.h',
                               'conv.h')],
                           language='c++', optional=True,
                           extra_compile_args=['-O3', '-std=c++17', '-Wno-attributes', '-Wno-psabi'])],
    cmdclass={'build_ext': BuildWithFFIHeaders},
)
