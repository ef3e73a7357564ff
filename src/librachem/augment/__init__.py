"""DVC stage ``augment``: LLM rephrasing with guards (:mod:`.rephrase`), near-duplicate removal
(:mod:`.dedup`), test decontamination and the augmented shards (:mod:`.stage`, entry
:func:`~.stage.run_augment`)."""
