"""Phase 1: request crafting, intent labelling, capping."""

from __future__ import annotations

from collections import Counter

import pytest

from librachem.common.errors import ConfigError, DataError
from librachem.generate.requests import (
    cap_requests,
    craft_requests,
    load_request_templates,
    read_seeds,
    request_label,
)
from tests.fakes import seed_row, tiny_seeds, write_seeds


def _seeds(tmp_path):
    return read_seeds(tiny_seeds(tmp_path / "seeds.parquet"))


def test_templates_file_has_eight_synthesis_phrasings_with_subject():
    templates = load_request_templates()
    synthesis = next(i for i in templates.intents if i.name == "synthesis")
    assert len(synthesis.templates) >= 8
    assert all("{subject}" in t for t in synthesis.templates.values())
    assert templates.version


@pytest.mark.parametrize(("cls", "harmful", "label"), [
    ("illegitimate", True, "illegitimate"), ("illegitimate", False, "legitimate"),
    ("legitimate", True, "legitimate"), ("legitimate", False, "legitimate")])
def test_label_depends_on_class_and_intent(cls, harmful, label):
    assert request_label(cls, harmful) == label


def test_extended_intents_label_each_request(tmp_path):
    reqs = craft_requests(_seeds(tmp_path), load_request_templates(), "extended", 1)
    labels = {(r.compound_class, r.intent): r.label for r in reqs}
    assert labels[("illegitimate", "synthesis")] == "illegitimate"
    assert labels[("illegitimate", "weaponisation")] == "illegitimate"
    assert labels[("illegitimate", "first_aid")] == "legitimate"
    assert labels[("legitimate", "synthesis")] == "legitimate"
    assert ("legitimate", "acquisition") not in labels
    smiles_req = next(r for r in reqs if r.mode == "smiles")
    assert "CC(=O)Oc1ccccc1C(=O)O" in smiles_req.prompt or "CCOP(=O)(C)F" in smiles_req.prompt


def test_paper_intent_set_is_synthesis_only(tmp_path):
    reqs = craft_requests(_seeds(tmp_path), load_request_templates(), "paper", 1)
    assert {r.intent for r in reqs} == {"synthesis"}
    assert len(reqs) == 6


def test_template_choice_is_seeded_and_per_row(tmp_path):
    seeds = _seeds(tmp_path)
    templates = load_request_templates()
    a = craft_requests(seeds, templates, "extended", 1)
    assert a == craft_requests(seeds, templates, "extended", 1)
    # Removing a compound changes no other request.
    fewer = craft_requests([s for s in seeds if s["compound_id"] != "I1"], templates,
                           "extended", 1)
    assert fewer == [r for r in a if r.compound_id != "I1"]
    seeds_differ = [craft_requests(seeds, templates, "extended", s) for s in range(2, 8)]
    assert any([r.template_id for r in b] != [r.template_id for r in a] for b in seeds_differ)


def test_cap_is_stratified_and_per_split(tmp_path):
    reqs = craft_requests(_seeds(tmp_path), load_request_templates(), "extended", 1)
    capped = cap_requests(reqs, {"train": 6, "test": 0}, seed=3)
    by_split = Counter(r.split for r in capped)
    assert by_split["train"] == 6
    assert by_split["test"] == sum(r.split == "test" for r in reqs)
    train_labels = Counter(r.label for r in capped if r.split == "train")
    assert train_labels["legitimate"] >= 2 and train_labels["illegitimate"] >= 2
    assert cap_requests(reqs, {"train": 6}, seed=3) == cap_requests(reqs, {"train": 6}, seed=3)


def test_weighted_round_robin_and_label_balance(tmp_path):
    from librachem.generate.requests import _round_robin

    a, b = list("aaaaaa"), list("bbbbbb")
    assert "".join(_round_robin([a, b])) == "ab" * 6
    # Weight 3 on the first queue: three of it per round while it lasts, then the rest.
    assert "".join(_round_robin([a, b], [3, 1])) == "aaab" "aaab" "bbbb"
    reqs = craft_requests(_seeds(tmp_path), load_request_templates(), "extended", 1)
    capped = cap_requests(reqs, {"train": 8}, seed=3, weights={"legitimate:synthesis": 4})
    labels = Counter(r.label for r in capped if r.split == "train")
    assert labels["legitimate"] == labels["illegitimate"] == 4


def test_unknown_intent_weight_key_fails():
    from librachem.common.config import validate_section
    from librachem.generate.stage import GenerateParams

    with pytest.raises(ConfigError, match="intent_weights"):
        validate_section(GenerateParams, "generate", {"intent_weights": {"synthesis": 2}})
    with pytest.raises(ConfigError, match="intent_weights"):
        validate_section(GenerateParams, "generate",
                         {"intent_weights": {"legitimate:synthesis": 0}})
    with pytest.raises(ConfigError, match=r"unknown label:intent keys \['legitimate:synthesys'\]"):
        validate_section(GenerateParams, "generate",  # well-formed, but no such intent
                         {"intent_weights": {"legitimate:synthesys": 2}})


def test_unknown_intent_set_and_bad_seeds(tmp_path):
    with pytest.raises(ConfigError, match="intent_set"):
        craft_requests(_seeds(tmp_path), load_request_templates(), "nope", 1)
    bad = seed_row("X", "x", "evil", "train")
    with pytest.raises(DataError, match="class"):
        read_seeds(write_seeds(tmp_path / "bad.parquet", [bad]))
    with pytest.raises(DataError, match="cannot read"):
        read_seeds(tmp_path / "missing.parquet")


def test_read_seeds_refuses_split_leaks_and_duplicate_rows(tmp_path):
    from librachem.common.errors import DataError
    from librachem.generate.requests import read_seeds
    from tests.fakes import seed_row, write_seeds

    ok = [seed_row("L1", "aspirin", "legitimate", "train", smiles="CC(=O)Oc1ccccc1C(=O)O"),
          seed_row("I1", "agent-alpha", "illegitimate", "test", smiles="CCOP(=O)(C)F")]
    assert len(read_seeds(write_seeds(tmp_path / "ok.parquet", ok))) == 2
    leak = ok + [seed_row("I1", "agent-alpha", "illegitimate", "train", mode="smiles",
                          smiles="CCOP(=O)(C)F")]
    with pytest.raises(DataError, match="both train and test"):
        read_seeds(write_seeds(tmp_path / "leak.parquet", leak))
    with pytest.raises(DataError, match="appears twice"):
        read_seeds(write_seeds(tmp_path / "dup.parquet", ok + ok[:1]))
