"""Tests of dataset and edit-request loading, validation, splitting and the built-in datasets (offline, fast)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import datasets
import datasets.config
import pytest

from circuitlib import builtin_data
from circuitlib.data import DATASET_ALIASES, dataset_name, load_classification, load_requests, split
from circuitlib.errors import InputError
from circuitlib.types import ClassificationData

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of the paper's data in ../shared/data, or skip the test where that folder is absent."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (the paper's data is not shipped with the project)")
    return path


@pytest.fixture(autouse=True)
def local_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the datasets library's cache of local JSON files inside the test's tmp_path."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def request_record(**rewrite: str) -> dict:
    """A valid CounterFact-style record, with requested_rewrite fields overridden by `rewrite`."""
    fields = {"prompt": "{} is a kind of", "subject": "A cat", "target_true": "animal", "target_new": "plant"} | rewrite
    return {
        "case_id": 0,
        "requested_rewrite": {
            "prompt": fields["prompt"],
            "subject": fields["subject"],
            "target_true": {"str": fields["target_true"]},
            "target_new": {"str": fields["target_new"]},
        },
        "paraphrase_prompts": ["A cat is a type of"],
        "neighborhood_prompts": [],
    }


# --- classification: CSV and validation -------------------------------------------------------------


def test_csv_blimp_dna1_loads_2000_rows_with_binary_labels() -> None:
    path = shared_file("blimp_dna1.csv")
    data = load_classification(f"csv:{path}")
    assert len(data) == 2000 == len(data.labels)
    assert set(data.labels) == {0, 1}
    assert all(isinstance(t, str) and t for t in data.texts)
    assert data.texts[0] == "Raymond is selling this sketch."
    assert data.name == "blimp_dna1"


def test_csv_without_index_column(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("text,label\ngood one,1\nbad one,0\n")
    data = load_classification(f"csv:{path}")
    assert (data.texts, data.labels, data.name) == (["good one", "bad one"], [1, 0], "plain")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "is empty"),
        (",text,label\n", "no rows"),
        (",sentence,label\n0,a,1\n1,b,0\n", "no column 'text'"),
        (",text,y\n0,a,1\n1,b,0\n", "no column 'label'"),
        (",text,label\n0,a,1\n1,b,2\n2,c,0\n", "row 1 has label 2;"),
        (",text,label\n0,a,1\n1,b,yes\n", "row 1 has label yes;"),
        (",text,label\n0,a,1\n1,b,1\n", "only one class present"),
        (",text,label\n0,a,1\n1,,0\n", "row 1 has an empty or missing text"),
    ],
)
def test_bad_csv_raises_input_error_naming_path_and_problem(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        load_classification(f"csv:{path}")
    message = str(info.value)
    assert str(path) in message and problem in message
    assert "\n" not in message


def test_missing_csv_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(InputError, match=rf"no such file {re.escape(str(path))}"):
        load_classification(f"csv:{path}")


@pytest.mark.parametrize("spec", ["tsv:/x/data.tsv", "blimp_dna9", "no_such_alias"])
def test_unknown_scheme_or_alias_lists_valid_forms(spec: str) -> None:
    with pytest.raises(InputError) as info:
        load_classification(spec)
    message = str(info.value)
    assert spec in message and "unknown dataset" in message
    assert all(alias in message for alias in DATASET_ALIASES)
    assert "csv:PATH" in message and "blimp:PATH.jsonl" in message


def test_unknown_builtin_lists_builtins() -> None:
    with pytest.raises(InputError, match=r"builtin:nope.*determiner_noun, hierarchy"):
        load_classification("builtin:nope")


# --- classification: BLiMP and persona in the hub's schema ------------------------------------------


def test_blimp_local_jsonl_gives_good_1_and_bad_0(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "dna.jsonl",
        [
            {"sentence_good": "Tom saw this cat.", "sentence_bad": "Tom saw these cat.", "UID": "x", "pair_id": 0},
            {"sentence_good": "Ann saw those dogs.", "sentence_bad": "Ann saw that dogs.", "UID": "x", "pair_id": 1},
        ],
    )
    data = load_classification(f"blimp:{path}")
    assert data.texts == ["Tom saw this cat.", "Tom saw these cat.", "Ann saw those dogs.", "Ann saw that dogs."]
    assert data.labels == [1, 0, 1, 0]
    assert data.name == "dna"


def test_persona_local_jsonl_maps_statement_and_answer(tmp_path: Path) -> None:
    def record(statement: str, answer: str) -> dict:
        other = " No" if answer == " Yes" else " Yes"
        return {
            "question": f'Is the following statement something you would say?\n"{statement}"',
            "statement": statement,
            "label_confidence": 0.9,
            "answer_matching_behavior": answer,
            "answer_not_matching_behavior": other,
        }

    path = write_jsonl(
        tmp_path / "risk-averse.jsonl",
        [
            record("I avoid risky bets", " Yes"),
            record("I love gambling", " No"),
            record("Safety first", " Yes"),
        ],
    )
    data = load_classification(f"persona:{path}")
    assert data.texts == ["I avoid risky bets", "I love gambling", "Safety first"]
    assert data.labels == [1, 0, 1]


@pytest.mark.parametrize(
    ("scheme", "records", "problem"),
    [
        ("blimp", [{"sentence_good": "a", "other": "b"}], "missing field 'sentence_bad'"),
        ("persona", [{"statement": "a"}], "missing field 'answer_matching_behavior'"),
        ("persona", [{"statement": "a", "answer_matching_behavior": " No"}], "only one class present"),
    ],
)
def test_bad_hub_schema_file(tmp_path: Path, scheme: str, records: list[dict], problem: str) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", records)
    with pytest.raises(InputError) as info:
        load_classification(f"{scheme}:{path}")
    assert str(path) in str(info.value) and problem in str(info.value)


def test_unparseable_and_missing_jsonl(tmp_path: Path) -> None:
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_text("this is not json\n")
    with pytest.raises(InputError, match=rf"{re.escape(str(garbled))} could not be read as JSON lines \(.*JSON"):
        load_classification(f"blimp:{garbled}")
    with pytest.raises(InputError, match=r"no such file .*absent\.jsonl"):
        load_classification(f"persona:{tmp_path / 'absent.jsonl'}")


def test_hub_specs_call_the_hub_with_the_right_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(path: str, **kwargs: object) -> datasets.Dataset:
        calls.append((path, kwargs))
        if path == "nyu-mll/blimp":
            return datasets.Dataset.from_dict({"sentence_good": ["g."], "sentence_bad": ["b."]})
        return datasets.Dataset.from_dict({"statement": ["s1", "s2"], "answer_matching_behavior": [" Yes", " No"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    blimp = load_classification("blimp_dnai1")
    persona = load_classification("persona_ra")
    assert calls == [
        ("nyu-mll/blimp", {"split": "train", "name": "determiner_noun_agreement_irregular_1"}),
        ("Anthropic/model-written-evals", {"split": "train", "data_files": "persona/risk-averse.jsonl"}),
    ]
    assert (blimp.texts, blimp.labels, blimp.name) == (["g.", "b."], [1, 0], "blimp_dnai1")
    assert (persona.texts, persona.labels, persona.name) == (["s1", "s2"], [1, 0], "persona_ra")


@pytest.mark.parametrize(
    ("spec", "local_form"), [("blimp_dna1", "blimp:PATH.jsonl"), ("persona:narcissism", "persona:PATH.jsonl")]
)
def test_hub_failure_says_hub_unreachable_and_suggests_local_file(
    monkeypatch: pytest.MonkeyPatch, spec: str, local_form: str
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(InputError) as info:
        load_classification(spec)
    message = str(info.value)
    assert spec in message and "hub unreachable" in message and local_form in message


# --- built-in datasets ------------------------------------------------------------------------------


def test_determiner_noun_size_balance_variety_and_determinism() -> None:
    data = builtin_data.determiner_noun()
    assert len(data) >= 1000
    assert Counter(data.labels) == {0: len(data) // 2, 1: len(data) // 2}
    assert len(set(data.texts)) == len(data)
    assert data == builtin_data.determiner_noun()
    words = [text.rstrip(".").split() for text in data.texts]
    assert len({w[0] for w in words}) >= 20 and len({w[1] for w in words}) >= 20 and len({w[-1] for w in words}) >= 40
    assert {"children", "mice", "people"} <= {w[-1] for w in words}


def test_determiner_noun_labels_on_hand_checked_nouns() -> None:
    number = {
        "book": "sg",
        "books": "pl",
        "child": "sg",
        "children": "pl",
        "mouse": "sg",
        "mice": "pl",
        "man": "sg",
        "men": "pl",
        "person": "sg",
        "people": "pl",
        "cactus": "sg",
        "cacti": "pl",
        "analysis": "sg",
        "analyses": "pl",
        "glass": "sg",
        "glasses": "pl",
    }
    determiner = {"this": "sg", "that": "sg", "these": "pl", "those": "pl"}
    data = builtin_data.determiner_noun()
    checked = 0
    for text, label in zip(data.texts, data.labels, strict=True):
        match = re.fullmatch(r"[A-Z][a-z]+ [a-z]+ (this|that|these|those) ([a-z]+)\.", text)
        assert match, text
        det, noun = match.groups()
        if noun in number:
            assert label == int(determiner[det] == number[noun]), text
            checked += 1
    assert checked >= 50


def test_hierarchy_facts_shape_and_determinism() -> None:
    facts = builtin_data.hierarchy_facts()
    assert len(facts) >= 100
    assert [f.case_id for f in facts] == list(range(len(facts)))
    assert facts == builtin_data.hierarchy_facts()
    assert len({f.subject for f in facts}) == len(facts)
    assert len({f.target_true for f in facts}) >= 12
    for f in facts:
        assert f.prompt == "{} is a kind of" and f.neighborhood_prompts == []
        assert f.target_new != f.target_true and " " not in f.target_true + f.target_new
        assert f"{f.subject} is a type of" in f.paraphrase_prompts
        assert f"{f.subject} falls under the category of" in f.paraphrase_prompts
        article, _, noun = f.subject.partition(" ")
        if noun:
            assert article == ("An" if noun[0] in "aeiou" else "A"), f.subject
    cat = next(f for f in facts if f.subject == "A cat")
    assert (cat.target_true, cat.text) == ("animal", "A cat is a kind of")
    assert next(f for f in facts if f.subject == "An apple").target_true == "fruit"


def test_hierarchy_classification_pairs_true_and_false_rows() -> None:
    data = builtin_data.hierarchy()
    facts = builtin_data.hierarchy_facts()
    assert len(data) == 2 * len(facts)
    assert Counter(data.labels) == {0: len(facts), 1: len(facts)}
    rows = dict(zip(data.texts, data.labels, strict=True))
    assert rows["A cat is a kind of animal"] == 1
    assert rows["A cat is a kind of plant"] == 0


@pytest.mark.parametrize(("spec", "name"), [("determiner_noun", "determiner_noun"), ("builtin:hierarchy", "hierarchy")])
def test_builtins_load_through_specs(spec: str, name: str) -> None:
    data = load_classification(spec)
    assert data.name == name and len(data) >= 200 and set(data.labels) == {0, 1}


# --- limit and split --------------------------------------------------------------------------------


def test_limit_is_balanced_seeded_and_a_subset() -> None:
    full = builtin_data.determiner_noun()
    sample = load_classification("determiner_noun", limit=101, seed=3)
    assert len(sample) == 101
    assert sorted(Counter(sample.labels).values()) == [50, 51]
    assert set(zip(sample.texts, sample.labels, strict=True)) <= set(zip(full.texts, full.labels, strict=True))
    assert sample == load_classification("determiner_noun", limit=101, seed=3)
    assert sample.texts != load_classification("determiner_noun", limit=101, seed=4).texts
    assert len(load_classification("determiner_noun", limit=10**6)) == len(full)


@pytest.mark.parametrize("small", [0, 1])
def test_limit_fills_from_the_larger_class(tmp_path: Path, small: int) -> None:
    path = tmp_path / "skewed.csv"
    path.write_text("text,label\n" + "".join(f"row {i},{int(i >= 2) ^ small}\n" for i in range(22)))
    sample = load_classification(f"csv:{path}", limit=10)
    assert Counter(sample.labels) == {small: 2, 1 - small: 8}


def test_limit_below_two_is_rejected() -> None:
    with pytest.raises(InputError, match="determiner_noun: limit must be at least 2"):
        load_classification("determiner_noun", limit=1)


def test_split_is_stratified_disjoint_and_seeded() -> None:
    data = ClassificationData("toy", [f"row {i}" for i in range(100)], [1] * 80 + [0] * 20)
    train, held_out = split(data, eval_fraction=0.25, seed=1)
    assert Counter(held_out.labels) == {1: 20, 0: 5}
    assert Counter(train.labels) == {1: 60, 0: 15}
    assert set(train.texts).isdisjoint(held_out.texts)
    assert sorted(train.texts + held_out.texts) == sorted(data.texts)
    assert (train, held_out) == split(data, eval_fraction=0.25, seed=1)
    assert held_out.texts != split(data, eval_fraction=0.25, seed=2)[1].texts


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    data = ClassificationData("toy", ["a", "b", "c", "d"], [0, 0, 1, 1])
    with pytest.raises(InputError, match="toy: eval_fraction"):
        split(data, eval_fraction=fraction)


# --- edit requests ----------------------------------------------------------------------------------


def test_shared_hierarchy_requests_load_with_fields() -> None:
    path = shared_file("hierarchy_data.json")
    requests = load_requests(f"json:{path}")
    assert len(requests) == 198
    assert [r.case_id for r in requests] == list(range(198))
    first = requests[0]
    assert (first.prompt, first.subject, first.target_true, first.target_new) == (
        "{} is a kind of",
        "A British Shorthair",
        "cat",
        "dog",
    )
    assert first.paraphrase_prompts == [
        "A British Shorthair is a type of",
        "A British Shorthair falls under the category of",
    ]
    assert first.neighborhood_prompts == []
    assert first.text == "A British Shorthair is a kind of"
    assert load_requests(f"json:{path}", limit=5) == requests[:5]


def test_builtin_requests_through_alias() -> None:
    assert load_requests("hierarchy") == builtin_data.hierarchy_facts()
    assert len(load_requests("builtin:hierarchy", limit=7)) == 7


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "is empty"),
        ("[{", "is not valid JSON"),
        ('{"case_id": 0}', "must hold a JSON list of records"),
        ("[]", "no records"),
        (
            json.dumps(
                [
                    request_record(),
                    {"requested_rewrite": {"prompt": "{} is", "subject": "A dog", "target_true": {"str": "animal"}}},
                ]
            ),
            "record 1 is missing field 'requested_rewrite.target_new.str'",
        ),
        (json.dumps([{"case_id": 0}]), "record 0 is missing field 'requested_rewrite.prompt'"),
        (json.dumps([request_record(prompt="A cat is")]), "record 0 prompt 'A cat is' must contain '{}'"),
        (json.dumps([request_record(target_new="animal")]), "record 0 target_new equals target_true"),
        (json.dumps([request_record() | {"case_id": "seven"}]), "record 0 case_id must be an integer"),
        (json.dumps(["A cat is a kind of animal"]), "record 0 is missing field 'requested_rewrite.prompt'"),
    ],
)
def test_bad_request_files_raise_input_error(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "requests.json"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        load_requests(f"json:{path}")
    assert str(path) in str(info.value) and problem in str(info.value)


def test_missing_or_unknown_request_source(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^requests json:.*: no such file .*absent\.json"):
        load_requests(f"json:{tmp_path / 'absent.json'}")
    with pytest.raises(InputError, match=r"csv:x\.csv: unknown edit-request source; use json:PATH, builtin:hierarchy"):
        load_requests("csv:x.csv")


# --- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("blimp_dna1", "blimp_dna1"),
        ("blimp:determiner_noun_agreement_1", "blimp_dna1"),
        ("persona:extraversion", "persona_e"),
        ("builtin:determiner_noun", "determiner_noun"),
        ("builtin:other", "other"),
        ("csv:/x/blimp_dna1.csv", "blimp_dna1"),
        ("json:/data/hierarchy_data.json", "hierarchy_data"),
        ("blimp:/tmp/my file.jsonl", "my_file"),
        ("blimp:anaphor_gender_agreement", "blimp_anaphor_gender_agreement"),
        ("persona:narcissism", "persona_narcissism"),
    ],
)
def test_dataset_name(spec: str, name: str) -> None:
    assert dataset_name(spec) == name
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", dataset_name(spec))


def test_split_holds_out_at_least_min_eval_rows_where_the_data_allows() -> None:
    rows = ClassificationData("d", [f"t{i}" for i in range(300)], [i % 2 for i in range(300)])
    assert len(split(rows, 0.1, 0)[1]) == 30
    train, held_out = split(rows, 0.1, 0, min_eval_rows=100)
    assert len(held_out) == 100 and len(train) == 200
    assert sum(held_out.labels) == 50  # still stratified
    small = ClassificationData("s", [f"t{i}" for i in range(40)], [i % 2 for i in range(40)])
    train, held_out = split(small, 0.1, 0, min_eval_rows=100)
    assert len(held_out) == 20 and len(train) == 20  # never more than half of each label
