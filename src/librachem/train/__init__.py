"""DVC stages ``sft`` (:mod:`.sft`) and ``dpo`` (:mod:`.dpo`): LoRA training with TRL + PEFT.

Shared: the params (:mod:`.params`), the training data (:mod:`.data`), one training loop
(:mod:`.loop`, :func:`~.loop.train_adapter`) and what is written beside the weights
(:mod:`.record`)."""
