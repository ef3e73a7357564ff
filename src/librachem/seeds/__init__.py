"""DVC stage ``seeds``: the curated compound list (:mod:`.compounds`) sampled into a balanced,
compound-disjoint split (:mod:`.stage`, entry :func:`~.stage.run_seeds`)."""
