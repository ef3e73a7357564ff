"""DVC stage ``base_model``: the base model as a Hugging Face folder (:mod:`.stage`, entry
:func:`~.stage.convert_base_model`)."""
