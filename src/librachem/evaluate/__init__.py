"""DVC stage ``evaluate`` (entry :func:`~.stage.evaluate`): params (:mod:`.params`), prompts
(:mod:`.prompts`), generation (:mod:`.generation`), judging and policy (:mod:`.judging`, with
the judge templates and parsers in :mod:`.judges` and the reasoning split in
:mod:`.reasoning`), metrics (:mod:`.metrics`) and outputs (:mod:`.outputs`)."""
