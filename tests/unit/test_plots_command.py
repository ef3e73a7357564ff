"""``librachem plots``: DVC's plots page with the vega scripts inlined (works offline) and one
SVG + PNG per chart, in a small DVC project using the repository's templates."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from librachem.commands.plots import plot_file_name

ROOT = Path(__file__).resolve().parents[2]


def test_plot_file_names():
    assert plot_file_name("metrics/eval_plots/tradeoff.csv") == "metrics_eval_plots_tradeoff"
    assert plot_file_name("metrics/sft/plots/metrics") == "metrics_sft_plots_metrics"
    assert plot_file_name("a b/c?.tsv") == "a_b_c"


@pytest.mark.slow
def test_plots_command_writes_an_offline_page_and_images(tmp_path, monkeypatch):
    from librachem.cli import main

    proj = tmp_path / "proj"
    (proj / "templates").mkdir(parents=True)
    shutil.copy(ROOT / "src/librachem/resources/plots/tradeoff.json", proj / "templates")
    (proj / "tradeoff.csv").write_text("model,safety,utility\nbase,0.1,1.0\ndpo,0.8,0.7\n")
    (proj / "dvc.yaml").write_text(
        "plots:\n  - tradeoff.csv:\n      template: templates/tradeoff.json\n"
        "      x: utility\n      y: safety\n      title: Trade-off\n")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=proj, check=True, capture_output=True)
    monkeypatch.chdir(proj)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    result = CliRunner().invoke(main, ["plots", "--out", "out"])
    assert result.exit_code == 0, result.output

    page = (proj / "out" / "index.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script[^>]*\bsrc=", page)
    assert not scripts and "cdn.jsdelivr" not in page          # nothing to fetch
    assert "window.vegaEmbed" in page and "vegaEmbed('#" in page  # inlined bundle + DVC's div
    svg = (proj / "out" / "static" / "tradeoff.svg").read_text(encoding="utf-8")
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert {"base", "dpo", "ideal (1, 1)", "Trade-off"} <= set(texts)
    assert (proj / "out" / "static" / "tradeoff.png").read_bytes().startswith(b"\x89PNG")
