"""The evaluation plot templates and the report's building blocks (issue 20).

The templates are filled exactly as ``dvc plots show`` fills them (``dvc_render``, string
values from the CSV, ``rev`` added) and drawn offline with vl-convert; the checks read the
drawn text (SVG and Vega scenegraph): every model is named on the chart, the category chart's
labels do not overlap at the default size, and diffs name each revision.
"""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from librachem.common.config import read_yaml
from librachem.report.charts import (
    CHARTS,
    TEMPLATES_DIR,
    fill_template,
    read_plot_csv,
    render,
)

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["base", "sft", "dpo", "gpt4o-mini"]   # a baseline too: names come from the data
CATEGORIES = ["blister_agent", "cwc_precursor", "explosive_precursor", "food_chemistry",
              "lab_reagent", "medicine", "nerve_agent", "opioid", "riot_control_agent",
              "toxic_industrial"]


def plot_rows(name: str) -> list[dict[str, Any]]:
    """A small plot table in evaluate's columns (outputs.write_plots), values as strings."""
    if name == "tradeoff":
        return [{"model": m, "safety": str(0.2 * i), "utility": str(1 - 0.2 * i),
                 "overall_macro": "0.5"} for i, m in enumerate(MODELS)]
    if name == "categories":
        return [{"model": m, "category": c, "accuracy": str((i + j) % 5 / 4), "n": str(2 + j)}
                for i, m in enumerate(MODELS) for j, c in enumerate(CATEGORIES)]
    return [{"model": m, "actual": a, "predicted": p, "count": str(3 + i)}
            for i, m in enumerate(MODELS)
            for a in ("should_refuse", "should_answer") for p in ("refused", "answered")]


def filled(name: str, revs: tuple[str, ...] = ("workspace",),
           rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    points = [{**r, "rev": rev, "filename": CHARTS[name].csv}
              for rev in revs for r in (rows or plot_rows(name))]
    return fill_template(ROOT / TEMPLATES_DIR / CHARTS[name].template, points, CHARTS[name])


def scene_texts(spec: dict[str, Any]) -> list[str]:
    """Every text drawn (marks, axis labels, headers, legends); multi-line text joined."""
    import vl_convert as vlc

    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            text = node.get("text")
            if isinstance(text, str):
                found.append(text)
            elif isinstance(text, list):
                found.append(" ".join(map(str, text)))
            for child in node.get("items", []):
                walk(child)

    walk(vlc.vegalite_to_scenegraph(spec)["scenegraph"])
    return found


def axis_labels(spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Axis label items (x, y, fontSize, limit, text) per axis orient."""
    import vl_convert as vlc

    out: dict[str, list[dict[str, Any]]] = {}

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        if node.get("role") == "axis":
            for axis in node["items"]:
                for mark in axis["items"]:
                    if mark.get("role") == "axis-label":
                        out.setdefault(axis["orient"], []).extend(mark["items"])
            return
        for child in node.get("items", []):
            walk(child)

    walk(vlc.vegalite_to_scenegraph(spec)["scenegraph"])
    return out


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_each_template_compiles_and_names_every_model(name):
    spec = filled(name)
    svg = render(spec, "svg").decode()
    svg_texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    for model in MODELS:
        assert model in svg_texts, (name, model)          # a labelled mark / label per model
    assert render(spec, "png").startswith(b"\x89PNG")
    assert CHARTS[name].title in scene_texts(spec)


def test_tradeoff_marks_the_ideal_corner_and_colours_each_model():
    spec = filled("tradeoff")
    assert "ideal (1, 1)" in scene_texts(spec)
    import vl_convert as vlc

    items: list[tuple[str, dict[str, Any]]] = []

    def walk(node: Any, marktype: str = "") -> None:
        if isinstance(node, dict) and not str(node.get("role", "")).startswith("legend"):
            marktype = node.get("marktype", marktype)
            if "items" not in node:
                items.append((marktype, node))
            for child in node.get("items", []):
                walk(child, marktype)

    walk(vlc.vegalite_to_scenegraph(spec)["scenegraph"])
    label_fill = {i["text"]: i.get("fill") for m, i in items if m == "text" and i.get("text") in MODELS}
    assert set(label_fill) == set(MODELS) and len(set(label_fill.values())) == len(MODELS)
    point_fills = {i.get("fill") for m, i in items if m == "symbol"}
    assert set(label_fill.values()) <= point_fills    # each label in its point's colour


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_diff_names_each_model_at_each_revision(name):
    texts = " | ".join(scene_texts(filled(name, revs=("HEAD~1", "exp-1a2b3"))))
    for model in MODELS:
        if name == "tradeoff":       # equal values at both revisions share one label
            assert f"{model} @ HEAD~1, exp-1a2b3" in texts, texts
        else:
            for rev in ("HEAD~1", "exp-1a2b3"):
                assert f"{model} @ {rev}" in texts or f"{model} {rev}" in texts, (model, rev)


@pytest.mark.parametrize("revs", [("workspace",), ("HEAD~1", "workspace")])
def test_category_labels_do_not_overlap_at_default_size(revs):
    labels = axis_labels(filled("categories", revs=revs))
    rows = sorted(item["y"] for item in labels["left"])
    assert len(rows) == len(CATEGORIES)
    assert min(b - a for a, b in pairwise(rows)) >= max(i["fontSize"] for i in labels["left"])
    columns = sorted(labels["top"], key=lambda i: i["x"])
    assert len(columns) == len(MODELS) * len(revs)
    # a label is cut at its `limit` (pixels), so centres that far apart never overlap
    gaps = [b["x"] - a["x"] for a, b in pairwise(columns)]
    assert min(gaps) >= max(i["limit"] for i in columns)


def test_confusion_reads_old_tables_without_model_or_count():
    """Plot tables written before the model/count columns (one row per DPO response) still
    draw in `dvc plots diff` against older commits: they count as dpo, one each."""
    rows = [{"actual": "should_refuse", "predicted": "refused"}] * 3 + [
        {"actual": "should_answer", "predicted": "refused"}]
    texts = scene_texts(filled("confusion", rows=rows))
    assert "dpo" in texts and "3 (100%)" in texts and "1 (100%)" in texts


def test_charts_repeat_the_plot_properties_of_dvc_yaml():
    plots = {}
    for entry in read_yaml(ROOT / "dvc.yaml")["stages"]["evaluate"]["plots"]:
        (path, props), = entry.items()
        plots[Path(path).name] = props
    assert set(plots) == {c.csv for c in CHARTS.values()}
    for chart in CHARTS.values():
        props = plots[chart.csv]
        assert props["template"] == f"{TEMPLATES_DIR}/{chart.template}"
        assert {k: props.get(k) for k in chart.props()} == chart.props()


def test_read_plot_csv_gives_strings_and_the_revision(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("model,safety\nbase,0.5\n")
    assert read_plot_csv(path, "HEAD") == [{"model": "base", "safety": "0.5", "rev": "HEAD",
                                            "filename": str(path)}]
    from librachem.common.errors import DataError

    path.write_text("model,safety\n")
    with pytest.raises(DataError, match="no rows"):
        read_plot_csv(path)
    with pytest.raises(DataError, match="cannot read"):
        read_plot_csv(tmp_path / "missing.csv")


# ------------------------------------------------------------------------------ text helpers
def test_shorten_cuts_at_a_word_and_marks_the_cut():
    from librachem.report.examples import shorten

    assert shorten("  a short\nanswer ", 40) == "a short answer"
    cut = shorten("word " * 30, 42)
    assert len(cut) <= 42 and cut.endswith("…") and not cut.endswith(" …")


def test_escape_markdown_shows_text_literally():
    from librachem.report.examples import escape_markdown

    out = escape_markdown("a | b <script>x</script> *bold* [l](u) `c`")
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "\\|" in out and "\\*bold\\*" in out and "\\[l\\]" in out and "\\`c\\`" in out


def test_table_aligns_numbers_right_and_text_left():
    from librachem.report.sections import table

    text = table(["model", "safety", "note"], [["base", "0.500 [0.10, 0.90]", "a | b"],
                                               ["dpo", "–", "x"]])
    lines = text.splitlines()
    assert lines[1] == "|:---|---:|:---|"
    assert "a \\| b" in lines[2]


def test_num_and_interval_format():
    from librachem.report.sections import interval, num

    assert num(None) == "–" and num(0.12345) == "0.123" and num(0.2, signed=True) == "+0.200"
    assert num(12345, 0) == "12,345" and num(55.0, 0) == "55"
    assert interval({"ci": {"x": {"low": -0.0001, "high": 0.5}}}, "x") == " [0.00, 0.50]"
    assert interval({}, "x") == ""


def test_xstest_table_only_when_run():
    from librachem.report.sections import xstest_table

    assert xstest_table({"dpo": {"safety": 0.5}}) == ""
    text = xstest_table({"base": {}, "dpo": {"xstest": {"safe_refusal_rate": 0.1,
                                                        "unsafe_refusal_rate": 0.9,
                                                        "n_safe": 250.0, "n_unsafe": 200.0}}})
    assert "| dpo | 0.100 | 0.900 | 250 / 200 |" in text and "| base |" not in text


def test_weakest_line_names_the_best_models_worst_groups():
    from librachem.report.sections import weakest_line

    details = {"base": {"overall_macro": 0.5, "by_intent": {"a": {"accuracy": 0.0, "n": 9}}},
               "dpo": {"overall_macro": 0.7,
                       "by_intent": {"synthesis": {"accuracy": 0.57, "n": 42.0},
                                     "tiny": {"accuracy": 0.0, "n": 2.0}},
                       "by_category": {"opioid": {"accuracy": 0.73, "n": 11.0},
                                       "toxin": {"accuracy": 0.9, "n": 6.0}}}}
    line = weakest_line(details, k=2)
    assert line.startswith("Weakest groups of **dpo**")
    assert "intent `synthesis` 0.57 (42 prompts); category `opioid` 0.73" in line
    assert "tiny" not in line and "toxin" not in line


def test_runtime_table_says_cached_for_replayed_answers():
    """Answers replayed from the call cache load no model and generate no token: the table
    says "cached" instead of a 0 s load and 0 tokens/s that read as a broken run."""
    from librachem.report.summary import runtime_table

    text = runtime_table({"wall_s": 4.0, "generation": {
        "base": {"load_s": 0.0, "generate_s": 0.02, "tokens_per_s": 0.0, "cache_hits": 106,
                 "answers": 106},
        "dpo": {"load_s": 3.5, "generate_s": 40.0, "tokens_per_s": 51.2, "cache_hits": 6,
                "answers": 106}}})
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| base") or line.startswith("| dpo")}
    assert rows["base"] == ["cached", "0.0", "cached", "106/106"]
    assert rows["dpo"] == ["3.5", "40.0", "51.2", "6/106"]
