"""The ``librachem`` command's sub-commands that are not pipeline stages: ``profile``
(:mod:`.profiles`), ``refusal-report`` (:mod:`.refusal_report`, the detector on XSTest) and
``judge-refusals`` (:mod:`.judge_refusals`, the detector on any CSV)."""
