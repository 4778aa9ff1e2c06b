"""Write .dvc/plots_offline.html: the page template `dvc plots show` fills, with Vega, Vega-Lite and Vega-
Embed inlined, so every chart draws with no network (DVC's own template loads them from a CDN; offline, only
the pictures showed). `.dvc/config` names it (`plots.html_template`).

Usage: python tools/offline_plots_template.py   (needs vl-convert-python, a test dependency: it bundles the
three libraries; run again to update them)."""

from __future__ import annotations

from pathlib import Path

import vl_convert

TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC plots</title>
    <!-- Vega, Vega-Lite and Vega-Embed (BSD-3-Clause, (c) the Vega project / University of
         Washington Interactive Data Lab), bundled by vl-convert-python __VERSION__ with
         tools/offline_plots_template.py: no network. -->
    <script>__BUNDLE__</script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def main() -> None:
    path = Path(__file__).resolve().parents[1] / ".dvc" / "plots_offline.html"
    bundle = vl_convert.javascript_bundle().replace("</script", "<\\/script")
    page = TEMPLATE.replace("__VERSION__", getattr(vl_convert, "__version__", "")).replace(
        "__BUNDLE__", bundle
    )
    path.write_text(page, encoding="utf-8")
    print(f"{path}: {len(page) / 1024:.0f} KB")


if __name__ == "__main__":
    main()
