"""Serve a bundle over HTTP.

  python -m recjax.serve --bundle=DIR [--host=127.0.0.1] [--port=8000] \
      [--api_key=SECRET] [--max_k=50]

Loads and checks the bundle, builds the retrieval index, compiles and warms
every ranker bucket, then starts uvicorn. Binds 127.0.0.1 unless --host says
otherwise. A bad bundle exits with status 2 and the reason.
"""

import logging
import os
import sys

from absl import app, flags

_BUNDLE = flags.DEFINE_string('bundle', None, 'Bundle directory (from '
                              'python -m recjax.main --mode=export).')
_HOST = flags.DEFINE_string('host', '127.0.0.1', 'Interface to bind.')
_PORT = flags.DEFINE_integer('port', 8000, 'TCP port.')
_API_KEY = flags.DEFINE_string(
    'api_key', os.environ.get('RECJAX_API_KEY'),
    'If set, every /v1 request needs this X-API-Key header '
    '(default: $RECJAX_API_KEY).')
_MAX_K = flags.DEFINE_integer('max_k', 50, 'Largest k a request may ask.')
_VERIFY = flags.DEFINE_bool('verify_hashes', False,
                            'Hash every bundle file against the manifest.')
flags.mark_flag_as_required('bundle')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import uvicorn
  from recjax.serve.app import create_app
  from recjax.serve.bundle import BundleError
  from recjax.serve.recommender import Recommender
  try:
    rec = Recommender.load(_BUNDLE.value, verify_hashes=_VERIFY.value)
  except (BundleError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  rec.warmup()
  logging.info('serving %s on http://%s:%d', rec.bundle.path, _HOST.value,
               _PORT.value)
  uvicorn.run(create_app(rec, api_key=_API_KEY.value, max_k=_MAX_K.value),
              host=_HOST.value, port=_PORT.value, log_level='warning',
              access_log=False)


if __name__ == '__main__':
  app.run(main)
