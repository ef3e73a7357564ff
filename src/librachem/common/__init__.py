"""What several stages share: params loading (:mod:`.config`), errors (:mod:`.errors`),
atomic writes (:mod:`.atomic`), content hashes (:mod:`.hashing`), provenance
(:mod:`.provenance`), Parquet shard sets with manifests (:mod:`.shards`) and the triplet
schemas (:mod:`.triplets`), the hazard scanner (:mod:`.hazard`), the chat format
(:mod:`.chat_format`), the rule-tier refusal detector (:mod:`.refusal`), adapter loading
(:mod:`.adapters`) and the stage scripts' error boundary (:mod:`.stagecli`).

Nothing here imports a stage package (``librachem.seeds`` ... ``librachem.evaluate``).
"""
