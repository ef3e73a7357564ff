"""The ``librachem`` console script: a Click group; modules add their own sub-commands.

Sub-commands here are user tools that run outside the DVC pipeline (the stages live in
``stages/``). To add one, define a Click command and register it with ``main.add_command``
(or decorate it with ``@main.command``) in this module.

Commands:
    judge-refusals  add a boolean ``refused`` column to a CSV with the rule-tier refusal
                    detector (:mod:`librachem.common.refusal`); offline, no model.
    check-params    validate every params.yaml section.
    profile         apply a packaged params profile (``paper``: paper scale) to params.yaml.
    estimate        calls, prompt tokens, output-token bound, cost range and wall time of the
                    LLM stages for the current params, before anything is paid (offline).
    refusal-report  accuracy, Cohen's kappa and per-class F1 of that detector on XSTest's
                    human-labelled completions (and the OpenAI RBR gold set), as JSON.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from librachem import __version__
from librachem.common.stagecli import stage_main

log = logging.getLogger(__name__)


@click.group()
@click.version_option(__version__, prog_name="librachem")
def main() -> None:
    """LibraChem tools (the pipeline itself runs with `dvc repro`)."""


@main.command("judge-refusals")
@click.argument("input_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--text-column", required=True, help="Column holding the model responses.")
@click.option("--out", "out_csv", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output CSV: the input columns plus `refused` (and `refusal_label`).")
@click.option("--with-label/--no-label", default=False, show_default=True,
              help="Also add `refusal_label` (refusal|compliance|unsure).")
@click.option("--patterns", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A pattern YAML instead of the packaged one.")
@stage_main
def judge_refusals(input_csv: Path, text_column: str, out_csv: Path, with_label: bool,
                   patterns: Path | None) -> None:
    """Mark each row of INPUT_CSV as refused or not (rule tier only; works offline).

    `refused` is true only for a confident refusal; empty cells and `unsure` verdicts are
    false (use --with-label to see them). Prints counts and the pattern-set version.
    """
    from librachem.commands.judge_refusals import judge_csv

    counts = judge_csv(input_csv, text_column, out_csv, with_label=with_label,
                       patterns_path=patterns)
    click.echo(" ".join(f"{k}={v}" for k, v in counts.items()))


@main.command("refusal-report")
@click.option("--xstest", "xstest_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="XSTest xstest_completions_labelled.csv")
@click.option("--rbr", "rbr_jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              multiple=True, help="OpenAI RBR gold .jsonl file(s); repeat the option")
@click.option("--patterns", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A pattern YAML instead of the packaged one.")
@click.option("--out", "out_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report here (JSON).")
@stage_main
def refusal_report(xstest_csv: Path | None, rbr_jsonl: tuple[Path, ...], patterns: Path | None,
                   out_json: Path | None) -> None:
    """Score the rule-tier refusal detector against human labels (refusal = full or partial)."""
    import json

    from librachem.commands.refusal_report import rbr_report, xstest_report
    from librachem.common.atomic import write_json
    from librachem.common.errors import ConfigError
    from librachem.common.refusal import load_patterns

    if xstest_csv is None and not rbr_jsonl:
        raise ConfigError("give --xstest and/or --rbr")
    ps = load_patterns(patterns) if patterns else None
    report = {}
    if xstest_csv is not None:
        report["xstest"] = xstest_report(xstest_csv, ps)
    if rbr_jsonl:
        report["openai_rbr_gold"] = rbr_report(list(rbr_jsonl), ps)
    if out_json is not None:
        write_json(out_json, report)
    click.echo(json.dumps(report, indent=2, sort_keys=True))


@main.command("estimate")
@click.option("--params", "params_path", default=Path("params.yaml"), show_default=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--profile", default=None, help="Estimate with this packaged profile applied "
              "over the params (e.g. paper), without writing anything.")
@click.option("--compounds", default=Path("data/seeds/compounds.csv"), show_default=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@stage_main
def estimate_cmd(params_path: Path, profile: str | None, compounds: Path, as_json: bool) -> None:
    """What generate, augment and evaluate will ask of their LLMs and what it costs at list
    prices: calls, prompt tokens (tiktoken), output-token bound, cost floor / expected /
    ceiling and wall time at the configured concurrency and limits. Offline: no call is made."""
    import json

    from librachem.commands.estimate import estimate, render
    from librachem.commands.profiles import apply_profile
    from librachem.common.config import read_yaml

    params = read_yaml(params_path)
    if profile:
        params = apply_profile(params, profile)
    figures = estimate(params, compounds)
    click.echo(json.dumps(figures, indent=2) if as_json else render(figures))


@main.command("check-params")
@click.option("--params", "params_path", default=Path("params.yaml"), show_default=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@stage_main
def check_params(params_path: Path) -> None:
    """Validate every section of a params file (what each stage checks before any work)."""
    from librachem.common.config import read_yaml, validate_all

    sections = validate_all(read_yaml(params_path))
    click.echo(f"{params_path}: {len(sections)} sections valid ({', '.join(sections)})")


@main.command("profile")
@click.argument("name")
@click.option("--params", "params_path", default=Path("params.yaml"), show_default=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the merged params (default: overwrite --params).")
@stage_main
def profile(name: str, params_path: Path, out_path: Path | None) -> None:
    """Apply a packaged params profile (e.g. `paper`) over params.yaml and validate it."""
    from librachem.commands.profiles import write_profile

    out_path = out_path or params_path
    write_profile(params_path, name, out_path)
    if out_path.resolve() == Path("params.yaml").resolve():
        click.echo(f"wrote {out_path} with profile {name!r}; run `dvc repro` (or `dvc exp run`)")
    else:
        click.echo(f"wrote {out_path} with profile {name!r}; the pipeline reads params.yaml: "
                   f"copy it there (`cp {out_path} params.yaml`), then run `dvc repro`")


if __name__ == "__main__":  # pragma: no cover
    main()
