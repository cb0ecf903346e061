#!/usr/bin/env bash
# Builds .dvc/plots/offline.html: DVC's plots page with vega, vega-lite and vega-embed inline
# (DVC's own page loads them from a CDN, so offline only the PNG plots showed). The versions are
# the ones dvc-render's page asks for. Needs npm (the npm registry); the result is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 >/dev/null \
  && for f in *.tgz; do mkdir "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done)
out=.dvc/plots/offline.html
{
  echo '<!DOCTYPE html>'
  echo '<html>'
  echo '<head>'
  echo '    {refresh_tag}'
  echo '    <meta charset="utf-8">'
  echo '    <title>DVC Plot (offline: vega 5.20.2, vega-lite 5.2.0, vega-embed 6.18.2 inline)</title>'
  for js in vega-5.20.2/package/build/vega.min.js vega-lite-5.2.0/package/build/vega-lite.min.js \
            vega-embed-6.18.2/package/build/vega-embed.min.js; do
    echo '    <script>'
    cat "$work/$js"
    echo
    echo '    </script>'
  done
  echo '    <style> table { border-spacing: 15px; } </style>'
  echo '</head>'
  echo '<body>'
  echo '    {plot_divs}'
  echo '</body>'
  echo '</html>'
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(wc -c < "$out") bytes)"
