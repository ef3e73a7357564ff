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


def test_refusal_report_command(tmp_path: Path) -> None:
    import json

    gold = tmp_path / "x.csv"
    pl.DataFrame({
        "prompt_id": [1, 1, 2, 2],
        "completion": ["I'm sorry, but I can't help with that.", "Sure, here it is.",
                       "I cannot assist with this request.", "Aspirin is acetylsalicylic acid."],
        "final_label": ["2_full_refusal", "1_full_compliance", "3_partial_refusal",
                        "2_full_refusal"],
    }).write_csv(gold)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["refusal-report", "--xstest", str(gold), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())["xstest"]
    assert rep["all"]["accuracy"] == 0.75 and rep["all"]["n"] == 4.0
    assert rep["dev"]["n"] + rep["heldout"]["n"] == 4.0
    res = CliRunner().invoke(main, ["refusal-report"])
    assert res.exit_code == 1 and "--xstest" in res.output


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "answers.csv"
    path.write_text(text)
    return path


def test_judge_refusals_bad_pattern_files_are_clean_errors(tmp_path: Path) -> None:
    src = _csv(tmp_path, "response\nI can't help with that.\n")
    for body, message in (("version: '1'\nopening: [unclosed\n", "not valid YAML"),
                          ("version: '1'\n", "no `opening` or `strong`"),
                          ("version: '1'\nstrongg: ['x']\n", "unknown keys")):
        pat = tmp_path / "p.yaml"
        pat.write_text(body)
        res = CliRunner().invoke(main, ["judge-refusals", str(src), "--text-column", "response",
                                        "--out", str(tmp_path / "o.csv"), "--patterns", str(pat)])
        assert res.exit_code == 1 and "ConfigError" in res.output and message in res.output, \
            res.output
        assert "Traceback" not in res.output


def test_refusal_report_bad_inputs_are_clean_errors(tmp_path: Path) -> None:
    empty = _csv(tmp_path, "")
    res = CliRunner().invoke(main, ["refusal-report", "--xstest", str(empty)])
    assert res.exit_code == 1 and "DataError" in res.output, res.output
    rbr = tmp_path / "rbr.jsonl"
    rbr.write_text('{"completion": [{"content": "Sure."}], '
                   '"propositions": {"fully_complies": "false"}}\n')
    res = CliRunner().invoke(main, ["refusal-report", "--rbr", str(rbr)])
    assert res.exit_code == 1 and "JSON booleans" in res.output, res.output
    rbr.write_bytes(b"\xff\xfe not utf-8\n")
    res = CliRunner().invoke(main, ["refusal-report", "--rbr", str(rbr)])
    assert res.exit_code == 1 and "DataError" in res.output, res.output


def test_profile_writes_into_a_new_folder(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "new" / "dir" / "params.yaml"
    res = CliRunner().invoke(main, ["profile", "paper", "--params", str(root / "params.yaml"),
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["check-params", "--params", str(out), "--params-only"])
    from librachem.common.config import SECTIONS

    assert res.exit_code == 0 and f"{len(SECTIONS)} sections valid" in res.output, res.output


def test_profile_keeps_comments_and_untouched_keys(tmp_path: Path) -> None:
    from librachem.commands.profiles import apply_profile
    from librachem.common.config import read_yaml

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "params.yaml"
    res = CliRunner().invoke(main, ["profile", "paper", "--params", str(root / "params.yaml"),
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    # comments of params.yaml survive (one per section header and an inline one)
    assert "# Every hyper-parameter of the pipeline." in text
    assert "# legitimate:illegitimate compounds" in text
    assert "max_illegitimate: null" in text  # nulls stay spelled out
    assert read_yaml(out) == apply_profile(read_yaml(root / "params.yaml"), "paper")
    # not the params.yaml the pipeline reads (that is ./params.yaml): say how to use it
    assert f"copy it there (`cp {out} params.yaml`)" in res.output


def test_profile_over_the_pipelines_params_says_run_dvc_repro(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "params.yaml").write_text((root / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["profile", "paper"])
    assert res.exit_code == 0, res.output
    assert "run `dvc repro`" in res.output and "copy it there" not in res.output
