"""The kernels' parts below the FFI handlers (csrc/tiles_test.cc, XNNPACK-style testers):
every row-tile width and stored width, both index types, several N:M patterns, the product
on a real thread pool and the direct convolution, each against a double-precision loop
over the dense matrix. Compiled here with the flags the package build uses, again without
vector shuffles (the path older compilers take), and for the baseline ISA alone
(``PCS_ONE_ISA``): the loader runs the AVX2 clone wherever the CPU has AVX2, so the
baseline clone would otherwise go untested on such machines."""

import os
import shutil
import subprocess

import pytest

from tests import helpers


@pytest.mark.skipif(shutil.which('g++') is None, reason='needs a C++ compiler')
@pytest.mark.parametrize('defines', [[], ['-DPCS_NO_SHUFFLE'], ['-DPCS_ONE_ISA']],
                         ids=['as built', 'without vector shuffles', 'baseline ISA'])
def test_every_tile_product_and_convolution_equals_the_dense_loop(tmp_path, defines):
  binary = str(tmp_path / 'tiles_test')
  csrc = os.path.join(helpers.REPO, 'csrc')
  subprocess.run(['g++', '-O3', '-std=c++17', '-Wno-attributes', '-Wno-psabi', *defines, '-I',
                  csrc, os.path.join(csrc, 'tiles_test.cc'), '-o', binary, '-lpthread'],
                 check=True, capture_output=True, text=True)
  done = subprocess.run([binary], capture_output=True, text=True, check=False)
  assert done.returncode == 0 and done.stdout.strip().endswith('0 failures'), done.stdout[-3000:]
