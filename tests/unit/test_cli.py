"""`librachem judge-refusals` through Click's CliRunner (offline, rule tier only)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from click.testing import CliRunner

from librachem.cli import main


def _write(path: Path) -> Path:
    pl.DataFrame({
        "id": ["a", "b", "c", "d"],
        "response": ["I\u2019m sorry, but I can\u2019t help with that.",
                     "Aspirin is made by acetylating salicylic acid.",
                     None,
                     "I cannot stress enough: wear goggles. Then add reagent A."],
        "n": ["1", "02", "3", "4"],
    }).write_csv(path)
    return path


def test_judge_refusals_adds_boolean_column(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.csv")
    out = tmp_path / "sub" / "out.csv"
    res = CliRunner().invoke(main, ["judge-refusals", str(src), "--text-column", "response",
                                    "--out", str(out), "--with-label"])
    assert res.exit_code == 0, res.output
    assert "rows=4 refused=1" in res.output
    df = pl.read_csv(out, infer_schema=False)
    assert df.columns == ["id", "response", "n", "refused", "refusal_label"]
    assert df["refused"].to_list() == ["true", "false", "false", "false"]
    assert df["refusal_label"].to_list() == ["refusal", "compliance", "unsure", "compliance"]
    assert df["n"].to_list() == ["1", "02", "3", "4"]  # untouched, no type inference


def test_judge_refusals_missing_column_is_clean_error(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.csv")
    res = CliRunner().invoke(main, ["judge-refusals", str(src), "--text-column", "nope",
                                    "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 1
    assert "SchemaError" in res.output and "nope" in res.output
    assert not (tmp_path / "o.csv").exists()


def test_main_is_a_group() -> None:
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0 and "judge-refusals" in res.output
