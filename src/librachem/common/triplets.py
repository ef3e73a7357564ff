"""The triplet tables: explicit pyarrow schemas of ``data/triplets/`` and ``data/augmented/``.

Format choice: TRL's *standard* (plain-string) preference format, ``prompt`` / ``chosen`` /
``rejected`` strings (TRL docs, "Dataset formats": preference, standard). Such shards load
with ``datasets.load_dataset("parquet", data_files={"train": "data/triplets/train-*.parquet"})``
and go into ``trl.DPOTrainer`` as they are (TRL appends EOS to standard rows). The prompt is
the bare user request with no template, so the training stages can render it either with the
model's chat template (wrapping it as ``[{"role": "user", ...}]``) or with the paper's
``Question: ...\\n\\nAnswer:`` format, and evaluate sees the same request text. Every other
column is provenance; TRL ignores it (only its tokenised columns reach the collator).

Columns (all non-null unless noted):

=================== ===================================================================
row_id              sha256 of the canonical JSON of (prompt, chosen, rejected)
prompt              the user request (string)
chosen / rejected   the preferred and the dispreferred answer (strings)
compound_id, name,  from the seeds (``smiles`` canonical RDKit SMILES)
smiles
subject             the string put into the prompt (name in TEXT mode, SMILES in SMILES mode)
mode                ``text`` | ``smiles``
compound_class      ``legitimate`` | ``illegitimate`` (the compound's class in the seeds)
category            seeds category (drug, chemical weapon, solvent ...)
intent              request intent (synthesis, acquisition, first_aid ...)
label               ``legitimate`` | ``illegitimate`` (the *request's* class; see requests.py)
split               ``train`` | ``test`` (from the seeds; compounds never cross splits)
template_id         request template id (``syn-01`` ...), or the augment variant's parent's
template_version    version of the request templates file
prompt_version      version of the answer prompts file
generator_model     model id the generator backend reported
chosen_kind /       answer kinds asked for (helpful / refusal / over_refusal / compliance)
rejected_kind
chosen_source /     ``llm`` or ``template:<pool id>`` (a counted fallback)
rejected_source
chosen_raw /        raw LLM text before trimming/redaction (null when the LLM failed)
rejected_raw
chosen_cache_key /  call-cache keys of the two generator calls (empty when not asked)
rejected_cache_key
hazard_outcome      ``not_scanned`` | ``clean`` | ``redacted``
hazard_score        max hazard score of the two raw answers (0 when not scanned)
phase               ``generate`` or ``augment``
=================== ===================================================================

The augmented schema adds ``parent_row_id``, ``prompt_variant``, ``chosen_variant``,
``rejected_variant`` (0 = the original text), ``rephrased_test`` (true only in the
rephrased-test-prompt set, which is never trained on), ``rephraser_model`` and
``rephrase_version`` (empty for rows without a rephrased part), ``prompt_cache_key`` (of
the prompt's rephraser call, empty for an original prompt). In augmented rows the
``*_raw`` and ``*_cache_key`` columns of a rephrased part are those of the rephraser call.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

TRIPLET_SCHEMA = pa.schema([
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("chosen", pa.string(), nullable=False),
    pa.field("rejected", pa.string(), nullable=False),
    pa.field("compound_id", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("smiles", pa.string()),
    pa.field("subject", pa.string(), nullable=False),
    pa.field("mode", pa.string(), nullable=False),
    pa.field("compound_class", pa.string(), nullable=False),
    pa.field("category", pa.string()),
    pa.field("intent", pa.string(), nullable=False),
    pa.field("label", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("template_id", pa.string(), nullable=False),
    pa.field("template_version", pa.string(), nullable=False),
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("generator_model", pa.string(), nullable=False),
    pa.field("chosen_kind", pa.string(), nullable=False),
    pa.field("rejected_kind", pa.string(), nullable=False),
    pa.field("chosen_source", pa.string(), nullable=False),
    pa.field("rejected_source", pa.string(), nullable=False),
    pa.field("chosen_raw", pa.string()),
    pa.field("rejected_raw", pa.string()),
    pa.field("chosen_cache_key", pa.string(), nullable=False),
    pa.field("rejected_cache_key", pa.string(), nullable=False),
    pa.field("hazard_outcome", pa.string(), nullable=False),
    pa.field("hazard_score", pa.int32(), nullable=False),
    pa.field("phase", pa.string(), nullable=False),
])

AUGMENTED_SCHEMA = pa.schema([
    *TRIPLET_SCHEMA,
    pa.field("parent_row_id", pa.string(), nullable=False),
    pa.field("prompt_variant", pa.int32(), nullable=False),
    pa.field("chosen_variant", pa.int32(), nullable=False),
    pa.field("rejected_variant", pa.int32(), nullable=False),
    pa.field("rephrased_test", pa.bool_(), nullable=False),
    pa.field("rephraser_model", pa.string(), nullable=False),
    pa.field("rephrase_version", pa.string(), nullable=False),
    pa.field("prompt_cache_key", pa.string(), nullable=False),
])

LABELS = ("legitimate", "illegitimate")
MODES = ("text", "smiles")
SPLITS = ("train", "test")


def row_id(prompt: str, chosen: str, rejected: str) -> str:
    """Content hash of a triplet: sha256 of the canonical JSON of the three texts."""
    payload = json.dumps([prompt, chosen, rejected], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Build a table with exactly ``schema`` from row dicts (an empty list gives 0 rows)."""
    return pa.Table.from_pylist(rows, schema=schema)
