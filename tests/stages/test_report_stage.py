"""The ``report`` stage on a small synthetic run (tests/report_fixtures.py): the metrics and
plot tables come from evaluate's own code; the stage runs through its Click command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.report_fixtures import HAZARD_PLACEHOLDER, LONG_REFUSAL, MODELS, write_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("run"), ROOT / "params.yaml")


def _args(run: Path, out: Path, params: Path = ROOT / "params.yaml") -> list[str]:
    m = run / "metrics"
    return ["--params", str(params), "--eval", str(m / "eval.json"),
            "--details", str(m / "eval_details.json"), "--runtime", str(m / "eval_runtime.json"),
            "--responses", str(run / "data" / "eval" / "responses.parquet"),
            "--seeds", str(m / "seeds.json"), "--data", str(m / "data.json"),
            "--augment", str(m / "augment.json"), "--train", str(m / "train.json"),
            "--sft-metrics", str(m / "sft" / "metrics.json"),
            "--dpo-metrics", str(m / "dpo" / "metrics.json"),
            "--sft-plots", str(m / "sft" / "plots" / "metrics"),
            "--dpo-plots", str(m / "dpo" / "plots" / "metrics"),
            "--plots", str(m / "eval_plots"),
            "--templates", str(ROOT / "src" / "librachem" / "resources" / "plots"),
            "--out", str(out / "report.md"), "--charts", str(out / "report")]


def _invoke(args: list[str]):
    from stages.report import main

    return CliRunner().invoke(main, args)


def test_report_from_a_small_run(run_dir, tmp_path):
    result = _invoke(_args(run_dir, tmp_path))
    assert result.exit_code == 0, result.output
    text = (tmp_path / "report.md").read_text(encoding="utf-8")

    # headline: one row per model with intervals, and dpo − base
    for model in MODELS:
        assert re.search(rf"^\| {model} \| [\d.]+ \[[\d.]+, [\d.]+\] \|", text, re.MULTILINE), model
    assert re.search(r"^\| \*\*dpo − base\*\* \| \+0\.833 \[", text, re.MULTILINE)
    # breakdowns, data and training summary, LLM usage
    for heading in ("### By intent", "### By mode", "### By compound category", "## Data",
                    "### LLM calls", "## Training"):
        assert heading in text, heading
    assert "| acquisition | 6 | both |" in text
    assert "dropped 4 (10.0%): truncated 3, hazard 1." in text
    assert "| generate | 80 | 10 | 70 | 0 | 12,345 | 6,789 | 0.01 | 0 |" in text
    assert "| dpo | 4 | 60 (dropped 0) | 0.690 → 0.500 |" in text

    # charts: PNG files linked by a path relative to the page
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == ["report/categories.png", "report/confusion.png",
                             "report/tradeoff.png", "report/training.png"]
    for link in links:
        assert (tmp_path / link).read_bytes().startswith(b"\x89PNG"), link

    # examples: from the stored answers, cut, escaped, and hazard-checked
    assert "#### Over-refusal (refused a legitimate prompt): `dpo`, 1 response" in text
    quoted = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("> ")]
    long_one = next(q for q in quoted if q.startswith("I'm sorry"))
    assert long_one.endswith("…") and len(long_one) <= 300 and len(LONG_REFUSAL) > 300
    assert "Step 1" not in text and "50 mL" not in text and HAZARD_PLACEHOLDER not in text
    assert "1 more withheld: the hazard scanner flagged the prompt or answer." in text
    assert "evaluate redacted (hazard scan of answers to prompts about illegitimate " \
           "compounds): base 0, sft 0, dpo 1." in text
    assert "Withheld because the hazard scanner flagged the prompt or answer (threshold 3): " \
           "1 example." in text


def test_examples_of_several_models_are_escaped(run_dir, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text().replace(
        "example_models: [dpo]", "example_models: [sft, dpo, gpt4o]"))
    result = _invoke(_args(run_dir, tmp_path, params))
    assert result.exit_code == 0, result.output
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "`sft`, 5 responses" in text                       # sft refuses 5 of 6 legitimate
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "I cannot \\| will not help" in text
    assert "_Model `gpt4o` was not evaluated in this run; no examples._" in text
    # sft's answered illegitimate prompt runs an inline numbered list: the scanner's step
    # signal (librachem.common.hazard) redacts it
    assert "\\[procedure details redacted\\]" in text
    assert "Obtain" not in text and "placeholder B" not in text
    assert "_(sentences with procedure signals redacted for this page)_" in text

    params.write_text((ROOT / "params.yaml").read_text().replace(
        "examples_per_failure: 3", "examples_per_failure: 0"))
    assert _invoke(_args(run_dir, tmp_path, params)).exit_code == 0
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "_Examples disabled (report.examples_per_failure: 0)._" in text and "> " not in text


def test_missing_inputs(run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("stale report of an older run")
    args = _args(run_dir, out)
    # a missing required input: clean error, and the stale report is gone
    bad = [a if not a.endswith("responses.parquet") else str(tmp_path / "none.parquet")
           for a in args]
    result = _invoke(bad)
    assert result.exit_code == 1 and "DataError" in result.output
    assert "none.parquet not found" in result.output
    assert not (out / "report.md").exists()
    # missing optional inputs: their sections say so
    optional = [str(tmp_path / "absent") if a.endswith(("train.json", "plots/metrics")) else a
                for a in args]
    result = _invoke(optional)
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "_training summary (metrics/train.json): not available in this run._" in text
    assert "_No training curves (DVCLive plots) in this run._" in text
    assert not (out / "report" / "training.png").exists()
