"""Builds the optional CPU kernels (`python -m recjax.ops.build`).

`make install` runs this once; at import, `recjax.ops.spmm` also builds on
demand if the shared library is missing or older than its source. Without a
C++ compiler everything still works through the pure-XLA fallback.
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, 'csr_spmm.cc')
LIBRARY = os.path.join(HERE, '_csr_spmm.so')


def is_stale() -> bool:
  return (not os.path.exists(LIBRARY)
          or os.path.getmtime(LIBRARY) < os.path.getmtime(SOURCE))


def build(verbose: bool = False) -> str:
  """Compiles csr_spmm.cc into _csr_spmm.so; returns the library path.

  Raises:
    RuntimeError: with the compiler's message if compilation fails.
  """
  import jax  # Only for the FFI headers' location.
  cxx = os.environ.get('CXX', 'g++')
  tmp = f'{LIBRARY}.{os.getpid()}.tmp'
  cmd = [cxx, '-O3', '-march=native', '-fopenmp', '-std=c++17', '-shared',
         '-fPIC', f'-I{jax.ffi.include_dir()}', SOURCE, '-o', tmp]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f'building {SOURCE} failed:\n{proc.stderr[-2000:]}')
  os.replace(tmp, LIBRARY)  # Atomic: concurrent builders never see half a .so.
  if verbose:
    print(f'built {LIBRARY}')
  return LIBRARY


if __name__ == '__main__':
  try:
    build(verbose=True)
  except (RuntimeError, OSError) as e:
    print(f'warning: {e}\nrecjax will use the pure-XLA fallback.',
          file=sys.stderr)
