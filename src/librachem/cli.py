"""The ``librachem`` console script: a Click group; modules add their own sub-commands.

Sub-commands here are user tools that run outside the DVC pipeline (the stages live in
``stages/``). To add one, define a Click command and register it with ``main.add_command``
(or decorate it with ``@main.command``) in this module.

Commands:
    judge-refusals  add a boolean ``refused`` column to a CSV with the rule-tier refusal
                    detector (:mod:`librachem.common.refusal`); offline, no model.
    check-params    validate every params.yaml section and check the machine has what they
                    need (GPU + bitsandbytes for QLoRA, API keys, HF_TOKEN for a hub id).
    profile         apply a packaged params profile (``paper``: paper scale) to params.yaml.
    plots           every `dvc plots` chart offline: DVC's page with the vega scripts
                    inlined, and one SVG + PNG per chart (vl-convert).
    estimate        calls, prompt tokens, output-token bound, cost range and wall time of the
                    LLM stages for the current params, before anything is paid (offline).
    refusal-report  accuracy, Cohen's kappa and per-class F1 of that detector on XSTest's
                    human-labelled completions (and the OpenAI RBR gold set), as JSON.
    verify-remote   check every object of the pipeline's outputs on a DVC remote (directory
                    manifests and their files included), name the missing outputs, and
                    upload them from the local cache.
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
@click.option("--fixtures", "fixtures_csv",
              type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Chemistry fixture CSV (default: the packaged resources/refusal_fixtures.csv, "
                   "always scored).")
@click.option("--patterns", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A pattern YAML instead of the packaged one.")
@click.option("--out", "out_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report here (JSON).")
@stage_main
def refusal_report(xstest_csv: Path | None, rbr_jsonl: tuple[Path, ...],
                   fixtures_csv: Path | None, patterns: Path | None,
                   out_json: Path | None) -> None:
    """Score the rule-tier refusal detector against human labels (refusal = full or partial):
    XSTest / RBR when given, and the packaged chemistry fixtures (precision and recall),
    with a `summary` block that puts them side by side."""
    import json

    from librachem.commands.refusal_report import (
        fixture_report,
        rbr_report,
        summary,
        xstest_report,
    )
    from librachem.common.atomic import write_json
    from librachem.common.errors import ConfigError
    from librachem.common.refusal import load_patterns

    if xstest_csv is None and not rbr_jsonl and fixtures_csv is None:
        raise ConfigError("give --xstest, --rbr and/or --fixtures")
    ps = load_patterns(patterns) if patterns else None
    report: dict = {}
    if xstest_csv is not None:
        report["xstest"] = xstest_report(xstest_csv, ps)
    if rbr_jsonl:
        report["openai_rbr_gold"] = rbr_report(list(rbr_jsonl), ps)
    report["fixtures"] = fixture_report(fixtures_csv, ps)
    report["summary"] = summary(report)
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
@click.option("--params-only", is_flag=True,
              help="Validate the values only; skip the machine checks (GPU, bitsandbytes, "
                   "API keys, HF_TOKEN).")
@stage_main
def check_params(params_path: Path, params_only: bool) -> None:
    """Validate every section of a params file (what each stage checks before any work), then
    check that this machine has what those params need (exit 1 naming each missing one)."""
    from librachem.commands.prereqs import missing_prerequisites
    from librachem.common.config import read_yaml, validate_all
    from librachem.common.errors import ConfigError

    sections = validate_all(read_yaml(params_path))
    click.echo(f"{params_path}: {len(sections)} sections valid ({', '.join(sections)})")
    if params_only:
        return
    missing = missing_prerequisites(sections)
    if missing:
        raise ConfigError("missing prerequisites for these params:\n  - "
                          + "\n  - ".join(missing))
    click.echo("prerequisites: all present (GPU, packages, API keys, HF_TOKEN as needed)")


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


@main.command("verify-remote")
@click.option("-r", "--remote", default=None, help="DVC remote name (default: the project's).")
@click.option("--repo", "repo_root", default=Path("."), show_default=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="the DVC project")
@click.option("--check-only", is_flag=True, help="report missing objects, upload nothing")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="parallel queries/uploads (DVC's default)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@stage_main
def verify_remote_cmd(remote: str | None, repo_root: Path, check_only: bool, jobs: int | None,
                      as_json: bool) -> None:
    """Check every object of the outputs in dvc.lock (and .dvc files) on a DVC remote,
    directory manifests and the files they list included, without trusting DVC's remote
    index; name the missing outputs by path and upload what the local cache holds.

    Run it after `dvc push` was interrupted, before telling a teammate to `dvc pull`, or when
    a pull fails with a bare hash. Exits 1 while any output stays incomplete.
    """
    import json

    from librachem.commands.verify_remote import render, verify_remote
    from librachem.common.errors import DataError

    report = verify_remote(repo_root, remote, repair=not check_only, jobs=jobs)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        for line in render(report, repair=not check_only):
            click.echo(line)
    if report.still_missing:
        paths = ", ".join(o.path for o in report.still_missing)
        raise DataError(f"remote {report.remote}: objects of {paths} are missing"
                        + (" (run without --check-only to upload them from the local cache)"
                           if check_only else " and not in the local cache either: push "
                           "them from a machine that has them (`dvc push`), or rerun the "
                           "stages that make them"))


@main.command("plots")
@click.argument("revisions", nargs=-1)
@click.option("--out", "out_dir", default=Path("dvc_plots"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder for index.html and static/<plot>.svg|png.")
@click.option("--html/--no-html", default=True, show_default=True,
              help="Also write DVC's page (index.html) with the vega scripts inlined.")
@stage_main
def plots(revisions: tuple[str, ...], out_dir: Path, html: bool) -> None:
    """Every `dvc plots` chart, offline: DVC's page with the vega scripts inlined and one
    SVG + PNG per chart. REVISIONS (e.g. HEAD~1 HEAD, experiment names) compare them like
    `dvc plots diff`; none = the workspace, like `dvc plots show`."""
    from librachem.commands.plots import run_plots

    result = run_plots(out_dir, revisions, html=html)
    if result["html"]:
        click.echo(f"offline page: {result['html']}")
    click.echo(f"{len(result['images'])} images in {out_dir / 'static'}")


if __name__ == "__main__":  # pragma: no cover
    main()
