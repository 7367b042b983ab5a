"""report.html: the results table, training curves and metric bars (PNG,
matplotlib's Agg backend: no display needed), written atomically.

  write_report(out_dir, rows, curves, extra)
    rows:   {model: {metric: value}} (the table, in insertion order)
    curves: {model: [(step, loss), ...]}
    extra:  dict shown under the table (seller recommendations, setup)

Screenshot in headless Chromium (Debian's `chromium` package):
  chromium --headless --no-sandbox --screenshot=DIR/report.png \
      --window-size=1280,2200 file://$PWD/DIR/report.html
"""

from __future__ import annotations

import html
import json
import os
from typing import Sequence

TABLE = (('precision@10', 'Precision@10', '{:.4f}'),
         ('recall@20', 'Recall@20', '{:.4f}'),
         ('ndcg@20', 'NDCG@20', '{:.4f}'),
         ('coverage@10', 'Item coverage@10', '{:.1%}'),
         ('cold_item_recall@10', 'Cold-start item Recall@10', '{:.4f}'),
         ('cold_item_within_cold_recall@10',
          'Cold-start item Recall@10 among new items', '{:.4f}'),
         ('ild@10', 'Intra-list diversity@10', '{:.3f}'),
         ('latency_p50_ms', 'p50 latency (ms)', '{:.2f}'),
         ('latency_p99_ms', 'p99 latency (ms)', '{:.2f}'))


def read_curve(workdir: str, key: str = 'train/loss') -> list:
  """[(step, value)] of `key` in WORKDIR/metrics.jsonl ([] if absent)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      r = json.loads(line)
      if key in r:
        out.append((int(r['step']), float(r[key])))
  return out


def _plots(out_dir: str, rows: dict, curves: dict) -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  files = []
  fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(
      4.2 * max(len(curves), 1), 3.2), squeeze=False)
  for ax, (name, pts) in zip(axes[0], curves.items()):
    if pts:
      ax.plot([p[0] for p in pts], [p[1] for p in pts])
    ax.set_title(f'{name}: training loss')
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, 'training_curves.png'), dpi=90)
  plt.close(fig)
  files.append('training_curves.png')
  metrics = [m for m in ('precision@10', 'recall@20', 'ndcg@20',
                         'cold_item_recall@10',
                         'cold_item_within_cold_recall@10', 'coverage@10',
                         'ild@10')
             if any(m in r for r in rows.values())]
  fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics), 3.4),
                           squeeze=False)
  names = list(rows)
  for ax, m in zip(axes[0], metrics):
    vals = [rows[n].get(m, 0.0) for n in names]
    ax.bar(range(len(names)), vals, color=[f'C{i}' for i in range(len(names))])
    ax.set_xticks(range(len(names)), names, rotation=45, ha='right',
                  fontsize=8)
    ax.set_title(m)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, 'metrics.png'), dpi=90)
  plt.close(fig)
  files.append('metrics.png')
  return files


def _fmt(fmt: str, v) -> str:
  if v is None or (isinstance(v, float) and v != v):
    return '–'
  return fmt.format(v)


def write_report(out_dir: str, rows: dict, curves: dict, extra: dict,
                 title: str = 'recjax: traditional vs graph + transformer',
                 columns: Sequence = TABLE) -> str:
  """Writes out_dir/report.html (+ PNGs, + report.json); returns its path."""
  os.makedirs(out_dir, exist_ok=True)
  images = _plots(out_dir, rows, curves)
  head = ''.join(f'<th>{html.escape(c[1])}</th>' for c in columns)
  body = ''.join(
      '<tr><td>' + html.escape(name) + '</td>' + ''.join(
          f'<td>{_fmt(fmt, r.get(key))}</td>' for key, _, fmt in columns)
      + '</tr>' for name, r in rows.items())
  extra_rows = ''.join(
      f'<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td>'
      '</tr>' for k, v in extra.items())
  imgs = ''.join(f'<p><img src="{f}" alt="{f}"></p>' for f in images)
  page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; }}
table {{ border-collapse: collapse; margin-bottom: 18px; }}
td, th {{ border: 1px solid #bbb; padding: 4px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
th {{ background: #eee; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table id="results"><tr><th>model</th>{head}</tr>{body}</table>
<h2>Setup and other figures</h2>
<table id="extra">{extra_rows}</table>
<h2>Plots</h2>{imgs}
</body></html>
"""
  path = os.path.join(out_dir, 'report.html')
  with open(path + '.tmp', 'w') as f:
    f.write(page)
  os.replace(path + '.tmp', path)
  with open(os.path.join(out_dir, 'report.json.tmp'), 'w') as f:
    json.dump(dict(rows=rows, extra=extra), f, indent=2, default=float)
  os.replace(os.path.join(out_dir, 'report.json.tmp'),
             os.path.join(out_dir, 'report.json'))
  return path
