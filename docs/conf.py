"""Sphinx configuration of the pcs API reference (``make docs``)."""

import os
import sys

sys.path.insert(0, os.path.abspath('..'))

import pcs  # after the path is set

project = 'pcs'
author = 'the pcs authors'
release = pcs.__version__
extensions = ['sphinx.ext.autodoc', 'sphinx.ext.napoleon', 'sphinx.ext.viewcode']
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_mock_imports = ['flax', 'orbax']
napoleon_google_docstring = True
napoleon_numpy_docstring = False
exclude_patterns = ['_build']
html_theme = 'alabaster'
html_theme_options = {'description': 'Sparsify JAX models by controlling the implicit bias.'}
nitpicky = False
