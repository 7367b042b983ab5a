#!/usr/bin/env bash
# Screenshot of a tools/report.py page in headless Chromium (Debian's
# `chromium` package: apt-get install chromium).
#   tools/screenshot_report.sh runs/report        # -> runs/report/report.png
set -euo pipefail
DIR=${1:?usage: $0 REPORT_DIR}
[[ -f "$DIR/report.html" ]] || { echo "error: $DIR/report.html not found" >&2; exit 2; }
command -v chromium >/dev/null || { echo "error: chromium not installed (apt-get install chromium)" >&2; exit 2; }
ABS=$(cd "$DIR" && pwd)
chromium --headless --no-sandbox --disable-gpu --window-size=1280,2200 \
  --screenshot="$ABS/report.png" "file://$ABS/report.html"
echo "$ABS/report.png"
