"""tools/validate_data.py: exit codes and output format, run as a subprocess
exactly as a user would (each run costs ~1 s of imports, so only a few)."""

import os
import re
import subprocess
import sys

import pandas as pd
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, 'tools', 'validate_data.py')
ERROR_LINE = re.compile(r'^\S+:\d+: \S+: .+$')


def run(*flags):
  return subprocess.run([sys.executable, TOOL, *flags], capture_output=True,
                        text=True, timeout=120, cwd=REPO)


@pytest.fixture
def files(tmp_path):
  events = tmp_path / 'events.csv'
  events.write_text('user_id,item_id,timestamp,event_type\n'
                    'u1,i1,1,view\nu2,i2,2,click\nu1,i2,3,cart\n')
  catalog = tmp_path / 'items.csv'
  catalog.write_text('item_id,seller_id,category,price\n'
                     'i1,s1,A>B,1\ni2,s2,A>C,2\n')
  (tmp_path / 'lgcn').mkdir()
  (tmp_path / 'lgcn' / 'train.txt').write_text('0 1 2\n1 0\n')
  (tmp_path / 'lgcn' / 'test.txt').write_text('0 0 1\n1 2\n')
  return tmp_path


def test_ok_csv_with_catalog(files):
  proc = run('--format=csv', f'--path={files / "events.csv"}',
             f'--catalog={files / "items.csv"}')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == ('ok: format=csv users=2 items=2 events=3 sellers=2 '
                         'categories=3\n')


def test_ok_parquet_and_lightgcn(files):
  pd.read_csv(files / 'events.csv').to_parquet(files / 'events.parquet')
  proc = run('--format=parquet', f'--path={files / "events.parquet"}')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith('ok: format=parquet users=2 items=2 events=3')
  proc = run('--format=lightgcn', f'--path={files / "lgcn"}')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == ('ok: format=lightgcn users=2 items=3 events=6 '
                         'train=3 test=3 test_in_train=1\n')


def test_data_error_exit_2(files):
  bad = files / 'bad.csv'
  bad.write_text('user_id,item_id,timestamp,event_type\n'
                 'u1,i1,1,view\nu2,i2,-7,click\n')
  proc = run('--format=csv', f'--path={bad}')
  assert proc.returncode == 2
  assert proc.stdout == ''
  assert proc.stderr == (f"{bad}:3: timestamp: negative timestamp '-7' "
                         '(must be seconds since 1970)\n')
  proc = run('--format=sasrec', f'--path={files / "missing.txt"}')
  assert proc.returncode == 2
  assert proc.stderr == f'{files / "missing.txt"}:0: -: no such file\n'
  assert ERROR_LINE.match(proc.stderr.strip())


def test_bad_flags_exit_2(files):
  proc = run('--format=xml', f'--path={files / "events.csv"}')
  assert proc.returncode == 2
  assert "invalid choice: 'xml'" in proc.stderr
  proc = run('--format=lightgcn', f'--path={files / "lgcn"}',
             f'--catalog={files / "items.csv"}')
  assert proc.returncode == 2
  assert '--catalog is only for csv and parquet' in proc.stderr
  assert 'Traceback' not in proc.stderr
