"""Running recjax.main in subprocesses (fresh JAX, own device count)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_cmd(workdir, config='configs/tiny.py', overrides=()):
  return [sys.executable, '-m', 'recjax.main', f'--config={config}',
          f'--workdir={workdir}', *overrides]


def env_with(devices=None, **extra):
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if 'force_host_platform_device_count' not in f]
  if devices:
    flags.append(f'--xla_force_host_platform_device_count={devices}')
  env['XLA_FLAGS'] = ' '.join(flags)
  env.update({k: str(v) for k, v in extra.items()})
  return env


def run_main(workdir, config='configs/tiny.py', overrides=(), devices=None,
             timeout=600):
  """Runs the launcher; returns (parsed last stdout line, CompletedProcess)."""
  proc = subprocess.run(main_cmd(workdir, config, overrides), cwd=REPO,
                        env=env_with(devices), capture_output=True, text=True,
                        timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f'exit {proc.returncode}\n{proc.stderr[-4000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1]), proc
