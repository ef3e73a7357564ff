"""``librachem plots``: every ``dvc plots`` chart of the project, offline.

DVC's own page (``dvc plots show``) loads Vega, Vega-Lite and vega-embed from a CDN, so it
is blank on a machine without internet. This command runs DVC itself (``dvc plots show`` or,
with revisions, ``dvc plots diff``) with an HTML template whose scripts are inlined from
vl-convert-python's bundle (DVC's ``--html-template``; the template has no ``{scripts}``
placeholder, so no CDN tag is added), and draws each chart to SVG and PNG with vl-convert
from the specs DVC fills (``dvc plots show --json``). Same data, same templates, no network.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from librachem.common.atomic import write_bytes
from librachem.common.errors import DataError

log = logging.getLogger(__name__)

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>LibraChem plots (offline)</title>
    <script type="text/javascript">{bundle}</script>
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>"""


def offline_template() -> str:
    """An HTML page for ``dvc plots show --html-template``: ``{plot_divs}`` (and
    ``{refresh_tag}``) as DVC expects, with vega, vega-lite and vega-embed inlined
    (``vl_convert.javascript_bundle``, which sets ``window.vegaEmbed`` as DVC's divs need)."""
    import vl_convert as vlc

    bundle = vlc.javascript_bundle()
    if "</script" in bundle or "{plot_divs}" in bundle:  # would break the page or DVC's fill
        raise DataError("the vl-convert JavaScript bundle cannot be inlined as is")
    return PAGE.replace("{bundle}", bundle)


def plot_file_name(plot_id: str) -> str:
    """A file name for a DVC plot id (``metrics/eval_plots/tradeoff.csv`` ->
    ``metrics_eval_plots_tradeoff``)."""
    stem = str(Path(plot_id).with_suffix("")) if Path(plot_id).suffix else plot_id
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "plot"


def _dvc(args: Sequence[str], repo: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise DataError(f"dvc {' '.join(args)} failed ({proc.returncode}): "
                        f"{(proc.stderr or proc.stdout)[-2000:]}")
    return proc.stdout


def run_plots(out: Path, revisions: Sequence[str] = (), repo: Path = Path("."),
              formats: Sequence[str] = ("svg", "png"), html: bool = True) -> dict[str, Any]:
    """Write ``out/index.html`` (offline) and ``out/static/<plot>.<fmt>`` for every vega
    plot of the DVC project in ``repo``; ``revisions`` (e.g. ``HEAD~1 HEAD``, experiment
    names) compare them as ``dvc plots diff`` does.

    Returns:
        ``{"html": path or None, "images": [paths], "errors": [DVC's per-plot errors]}``.

    Raises:
        DataError: DVC failed or loaded no plot.
    """
    from librachem.report.charts import render

    out = out.resolve()
    cmd = ["plots", "diff", *revisions] if revisions else ["plots", "show"]
    page = None
    if html:
        with tempfile.TemporaryDirectory() as tmp:
            template = Path(tmp) / "offline.html"
            template.write_text(offline_template(), encoding="utf-8")
            _dvc([*cmd, "--html-template", str(template), "-o", str(out)], repo)
        page = out / "index.html"
        if not page.is_file():
            raise DataError(f"dvc wrote no {page}: no plots were loaded")
    text = _dvc([*cmd, "--json", "-o", str(out)], repo)
    result = json.loads(text[text.index("{"):]) if "{" in text else {}
    images = []
    for plot_id, entries in (result.get("data") or {}).items():
        for entry in entries:
            if entry.get("type") != "vega" or not entry.get("content"):
                continue
            for fmt in formats:
                path = out / "static" / f"{plot_file_name(plot_id)}.{fmt}"
                write_bytes(path, render(entry["content"], fmt))
                images.append(path)
    if not images and page is None:
        raise DataError("dvc loaded no vega plot: run the pipeline (`dvc repro`) first")
    for err in result.get("errors") or []:
        log.warning("dvc plots: %s", err)
    return {"html": page, "images": images, "errors": result.get("errors") or []}
