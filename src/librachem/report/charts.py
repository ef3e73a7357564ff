"""The evaluation charts, rendered offline: the plot tables of ``evaluate``
(``metrics/eval_plots/*.csv``) filled into the repository's DVC plot templates
(``src/librachem/resources/plots/*.json``) exactly as ``dvc plots show`` fills them
(``dvc_render.VegaRenderer``), then drawn to PNG or SVG by vl-convert (Vega, Vega-Lite and a
renderer bundled in one wheel: no browser, no network).

:data:`CHARTS` repeats the plot properties of ``dvc.yaml``'s evaluate ``plots:`` section
(``tests/unit/test_report.py`` checks that they agree), so the report stage need not read
``dvc.yaml``.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from librachem.common.errors import DataError

TEMPLATES_DIR = "src/librachem/resources/plots"


@dataclass(frozen=True)
class Chart:
    """One plot of ``dvc.yaml``: its CSV under the plots folder, its template file and the
    DVC plot properties (``x``, ``y``, labels, title)."""

    csv: str
    template: str
    x: str
    y: str
    x_label: str
    y_label: str
    title: str

    def props(self) -> dict[str, str]:
        """The DVC plot properties (``template`` excluded)."""
        return {k: v for k, v in asdict(self).items() if k not in ("csv", "template")}


CHARTS: dict[str, Chart] = {
    "tradeoff": Chart("tradeoff.csv", "tradeoff.json", x="utility", y="safety",
                      x_label="utility (answers legitimate prompts)",
                      y_label="safety (refuses illegitimate prompts)",
                      title="Safety vs utility per model"),
    "categories": Chart("categories.csv", "categories.json", x="model", y="category",
                        x_label="model", y_label="compound category (prompts)",
                        title="Accuracy per compound category and model"),
    "confusion": Chart("confusion.csv", "confusion.json", x="predicted", y="actual",
                       x_label="model's answer", y_label="expected",
                       title="Expected vs observed behaviour per model"),
}


def read_plot_csv(path: Path, rev: str = "workspace") -> list[dict[str, Any]]:
    """The rows of a plot CSV as DVC hands them to a template: every value a string, plus
    ``rev``, ``filename`` and ``field`` (``dvc.render.converter.vega``).

    Raises:
        DataError: the file is missing or has no rows.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DataError(f"cannot read plot table {path}: {exc}") from exc
    if not rows:
        raise DataError(f"plot table {path} has no rows")
    return [{**row, "rev": rev, "filename": str(path)} for row in rows]


def fill_template(template: Path, datapoints: list[dict[str, Any]], chart: Chart) -> dict[str, Any]:
    """The Vega-Lite spec DVC would show: ``template`` with its ``<DVC_METRIC_*>`` anchors
    filled from ``datapoints`` and the chart's properties (``dvc_render.VegaRenderer``).

    Raises:
        DataError: the template is missing or not valid JSON, or a field is missing.
    """
    from dvc_render import VegaRenderer
    from dvc_render.exceptions import DvcRenderError

    if not template.is_file():
        raise DataError(f"plot template {template} not found")
    points = [{**p, "field": chart.y} for p in datapoints]
    try:
        renderer = VegaRenderer(points, chart.csv, template=str(template), **chart.props())
        return renderer.get_filled_template()
    except (DvcRenderError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise DataError(f"plot template {template}: {exc}") from exc


def render(spec: dict[str, Any], fmt: str = "png", scale: float = 1.0) -> bytes:
    """Draw a Vega-Lite spec offline: PNG bytes (``scale`` x the spec's pixel size) or SVG
    (UTF-8 bytes)."""
    import vl_convert as vlc

    if fmt == "png":
        return vlc.vegalite_to_png(spec, scale=scale)
    if fmt == "svg":
        return vlc.vegalite_to_svg(spec).encode("utf-8")
    raise ValueError(f"unknown image format {fmt!r}; expected png or svg")


def chart_specs(plots_dir: Path, templates_dir: Path) -> dict[str, dict[str, Any]]:
    """The filled spec of every chart in :data:`CHARTS` (name -> Vega-Lite spec).

    Raises:
        DataError: a plot table or template is missing or unusable.
    """
    return {name: fill_template(templates_dir / chart.template,
                                read_plot_csv(plots_dir / chart.csv), chart)
            for name, chart in CHARTS.items()}


TRAINING_CURVES = (("sft", "loss.tsv", "sft loss"), ("dpo", "loss.tsv", "dpo loss"),
                   ("dpo", "rewards/margins.tsv", "dpo reward margin (chosen − rejected)"))


def training_spec(plot_dirs: dict[str, Path]) -> dict[str, Any] | None:
    """A Vega-Lite spec of the training curves logged by DVCLive (``<dir>/loss.tsv``, and
    for dpo ``rewards/margins.tsv``: columns ``step`` and the value), one panel each; None
    when no curve file exists (e.g. sft disabled and dpo not run)."""
    rows = []
    for stage, name, panel in TRAINING_CURVES:
        path = plot_dirs.get(stage, Path("/nonexistent")) / name
        if not path.is_file():
            continue
        with path.open(newline="", encoding="utf-8") as handle:
            for rec in csv.DictReader(handle, delimiter="\t"):
                value = rec.get(Path(name).stem)
                if rec.get("step") not in (None, "") and value not in (None, ""):
                    rows.append({"panel": panel, "step": float(rec["step"]),
                                 "value": float(value)})
    if not rows:
        return None
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": {"text": "Training curves (DVCLive, per logged step)", "anchor": "middle"},
        "data": {"values": rows},
        "facet": {"field": "panel", "type": "nominal", "sort": [p for _, _, p in TRAINING_CURVES],
                  "header": {"title": None, "labelFontSize": 12, "labelFontWeight": "bold"}},
        "columns": 3,
        "resolve": {"scale": {"x": "independent", "y": "independent"}},
        "spec": {"width": 220, "height": 150, "mark": {"type": "line", "color": "#4c78a8"},
                 "encoding": {"x": {"field": "step", "type": "quantitative"},
                              "y": {"field": "value", "type": "quantitative", "title": None,
                                    "scale": {"zero": False}}}},
    }
