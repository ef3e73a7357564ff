"""The ``report`` stage: one Markdown report per run (``metrics/report.md``) with charts.

``params`` (the ``report`` params section and the stage's paths), ``charts`` (the evaluation
plot tables through the repository's DVC plot templates into PNG/SVG with vl-convert),
``sections`` (Markdown tables from the metrics files), ``examples`` (failure examples from the
stored responses, re-checked by the hazard scanner) and ``stage`` (the entry function).
"""
