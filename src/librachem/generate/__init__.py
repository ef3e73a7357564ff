"""DVC stage ``generate``: phase 1 requests (:mod:`.requests`), phase 2 LLM-written answers
with quality gates (:mod:`.answers`), phase 3 triplet shards (:mod:`.stage`, entry
:func:`~.stage.run_generate`)."""
