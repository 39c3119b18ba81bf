"""Load and validate classification data and edit requests from alias, csv:, blimp:, persona:, json:, builtin: specs."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from circuitlib import builtin_data, settings
from circuitlib.errors import InputError
from circuitlib.settings import setting
from circuitlib.types import ClassificationData, EditRequest

if TYPE_CHECKING:
    from datasets import Dataset

DATASET_ALIASES: dict[str, str] = {
    "blimp_dna1": "blimp:determiner_noun_agreement_1",
    "blimp_dna2": "blimp:determiner_noun_agreement_2",
    "blimp_dnai1": "blimp:determiner_noun_agreement_irregular_1",
    "persona_ra": "persona:risk-averse",
    "persona_e": "persona:extraversion",
    "hierarchy": "builtin:hierarchy",
    "determiner_noun": "builtin:determiner_noun",
}
BLIMP_REPO = "nyu-mll/blimp"
PERSONA_REPO = "Anthropic/model-written-evals"

_BUILTIN_CLASSIFICATION: dict[str, Callable[[], ClassificationData]] = {
    "determiner_noun": builtin_data.determiner_noun,
    "hierarchy": builtin_data.hierarchy,
}
_BUILTIN_REQUESTS: dict[str, Callable[[], list[EditRequest]]] = {"hierarchy": builtin_data.hierarchy_facts}
_CLASSIFICATION_FORMS = "csv:PATH, blimp:CONFIG, blimp:PATH.jsonl, persona:NAME, persona:PATH.jsonl, builtin:NAME"
_REQUEST_FORMS = "json:PATH, builtin:hierarchy"
_CSV_LABELS = {"0": 0, "1": 1}
MAX_CSV_ROWS = 200_000  # a CSV dataset holds at most this many rows: discovery keeps every row's features in memory
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _resolve(spec: str) -> tuple[str, str]:
    """Expand an alias and split the spec into (scheme, value)."""
    spec = DATASET_ALIASES.get(spec, spec)
    scheme, sep, value = spec.partition(":")
    return (scheme, value) if sep else ("", spec)


def _is_local(value: str) -> bool:
    """Whether a blimp:/persona: value names a local file in the hub's schema rather than a hub config or name."""
    return value.endswith((".json", ".jsonl")) or Path(value).expanduser().is_file()


def dataset_name(spec: str) -> str:
    """A short stable name for run names and paths: the alias if one matches, else derived from the spec."""
    if spec in DATASET_ALIASES:
        return spec
    for alias, target in DATASET_ALIASES.items():
        if spec == target:
            return alias
    scheme, value = _resolve(spec)
    if scheme in ("csv", "json") or _is_local(value):
        name = Path(value).stem
    elif scheme in ("blimp", "persona"):
        name = f"{scheme}_{value}"
    else:
        name = value
    return _UNSAFE.sub("_", name).strip("_") or "data"


def _existing_file(what: str, spec: str, value: str) -> Path:
    """The file a spec names, or an InputError (starting with `what` and the spec) if it is missing or empty."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise InputError(f"{what} {spec}: no such file {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {spec}: file {path} is empty")
    return path


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line InputErrors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _hf_records(spec: str, value: str, fields: tuple[str, ...], repo: str, hub_kwargs: dict[str, Any]) -> Dataset:
    """Rows of a local JSON-lines file in the hub's schema, or of the hub dataset `repo`; checks that `fields` exist."""
    import datasets

    if _is_local(value):
        path = _existing_file("dataset", spec, value)
        try:
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        except Exception as exc:  # datasets wraps the parser's error, which says what and where, in its own
            cause = exc
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise InputError(f"dataset {spec}: {path} could not be read as JSON lines ({_first_line(cause)})") from exc
    else:
        try:
            ds = datasets.load_dataset(repo, split="train", **hub_kwargs)
        except Exception as exc:  # network, auth and missing-config errors all mean "not available from the hub"
            raise InputError(
                f"dataset {spec}: could not load {repo} from the Hugging Face hub (hub unreachable or no such data: "
                f"{_first_line(exc)}); offline, pass a local file in the hub's schema: {_resolve(spec)[0]}:PATH.jsonl"
            ) from exc
    for name in fields:
        if name not in ds.column_names:
            raise InputError(f"dataset {spec}: missing field '{name}' (has {', '.join(ds.column_names) or 'none'})")
    return ds


def _load_csv(spec: str, value: str) -> tuple[list[Any], list[Any]]:
    """Texts and labels of a CSV with `text` and `label` columns; labels other than "0"/"1" stay raw for the check."""
    path = _existing_file("dataset", spec, value)
    try:
        frame = pd.read_csv(path, dtype={"text": str, "label": str}, nrows=MAX_CSV_ROWS + 1)  # bounded read
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"dataset {spec}: {path} could not be read as CSV ({_first_line(exc)})") from exc
    if len(frame) > MAX_CSV_ROWS:
        raise InputError(
            f"dataset {spec}: {path} has more than {MAX_CSV_ROWS} rows (circuitlib.data.MAX_CSV_ROWS); "
            "subsample it to a smaller file"
        )
    for column in ("text", "label"):
        if column not in frame.columns:
            found = ", ".join(map(str, frame.columns))
            raise InputError(f"dataset {spec}: {path} has no column '{column}' (columns: {found})")
    labels = [_CSV_LABELS.get(raw.strip(), raw) if isinstance(raw, str) else raw for raw in frame["label"]]
    return frame["text"].tolist(), labels


def _load_blimp(spec: str, value: str) -> tuple[list[Any], list[Any]]:
    ds = _hf_records(spec, value, ("sentence_good", "sentence_bad"), BLIMP_REPO, {"name": value})
    texts, labels = [], []
    for good, bad in zip(ds["sentence_good"], ds["sentence_bad"], strict=True):
        texts += [good, bad]
        labels += [1, 0]
    return texts, labels


def _load_persona(spec: str, value: str) -> tuple[list[Any], list[Any]]:
    fields = ("statement", "answer_matching_behavior")
    ds = _hf_records(spec, value, fields, PERSONA_REPO, {"data_files": f"persona/{value}.jsonl"})
    labels = [1 if str(answer).strip() == "Yes" else 0 for answer in ds["answer_matching_behavior"]]
    return list(ds["statement"]), labels


_LOADERS: dict[str, Callable[[str, str], tuple[list[Any], list[Any]]]] = {
    "csv": _load_csv,
    "blimp": _load_blimp,
    "persona": _load_persona,
}


def _validated(spec: str, texts: list[Any], labels: list[Any]) -> ClassificationData:
    """Check for rows, non-empty texts, 0/1 labels and both classes; name the first bad row."""
    if not texts:
        raise InputError(f"dataset {spec}: no rows")
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"dataset {spec}: row {i} has an empty or missing text")
        if label not in (0, 1):
            raise InputError(f"dataset {spec}: row {i} has label {label}; labels must be 0 or 1")
    ints = [int(label) for label in labels]
    if len(set(ints)) < 2:
        raise InputError(f"dataset {spec}: only one class present (every label is {ints[0]}); need both 0 and 1")
    return ClassificationData(dataset_name(spec), list(texts), ints)


def load_classification(spec: str, limit: int | None = None, seed: int = 0) -> ClassificationData:
    """Load a validated binary classification dataset; `limit` takes a seeded, label-balanced subsample."""
    if limit is not None and limit < 2:
        raise InputError(f"dataset {spec}: limit must be at least 2 (one row of each label), got {limit}")
    scheme, value = _resolve(spec)
    if scheme == "builtin":
        if value not in _BUILTIN_CLASSIFICATION:
            known = ", ".join(_BUILTIN_CLASSIFICATION)
            raise InputError(f"dataset {spec}: no built-in dataset '{value}' (built-ins: {known})")
        built = _BUILTIN_CLASSIFICATION[value]()
        texts, labels = built.texts, built.labels
    elif scheme in _LOADERS:
        texts, labels = _LOADERS[scheme](spec, value)
    else:
        raise InputError(
            f"dataset {spec}: unknown dataset; use an alias ({', '.join(DATASET_ALIASES)}) or {_CLASSIFICATION_FORMS}"
        )
    data = _validated(spec, texts, labels)
    return _balanced_subsample(data, limit, seed) if limit is not None and limit < len(data) else data


def from_hub(spec: str) -> bool:
    """Whether a classification spec names data on the Hugging Face hub (not a local file or a built-in)."""
    scheme, value = _resolve(spec)
    return scheme in ("blimp", "persona") and not _is_local(value)


def check_classification_spec(spec: str) -> None:
    """Fail fast on a spec that cannot load: local and built-in data are loaded and validated, hub specs only parsed."""
    scheme, value = _resolve(spec)
    if from_hub(spec):
        if not value:
            raise InputError(f"dataset {spec}: no {scheme} name given")
        return
    load_classification(spec)


def _indices_by_label(data: ClassificationData, rng: random.Random) -> dict[int, list[int]]:
    """Row indices of each label, shuffled by `rng`."""
    groups: dict[int, list[int]] = {0: [], 1: []}
    for i, label in enumerate(data.labels):
        groups[label].append(i)
    for indices in groups.values():
        rng.shuffle(indices)
    return groups


def _subset(data: ClassificationData, indices: list[int]) -> ClassificationData:
    """The rows at `indices`, kept in their original order."""
    ordered = sorted(indices)
    return ClassificationData(data.name, [data.texts[i] for i in ordered], [data.labels[i] for i in ordered])


def _balanced_subsample(data: ClassificationData, limit: int, seed: int) -> ClassificationData:
    """`limit` rows, half of each label where the classes allow, the rest from the larger class."""
    groups = _indices_by_label(data, random.Random(seed))
    n0 = min(len(groups[0]), max(limit // 2, limit - len(groups[1])))
    return _subset(data, groups[0][:n0] + groups[1][: limit - n0])


# Split settings added since circuits, checkpoints and sweeps first recorded their split, at the value that draws
# the rows a record without them was drawn from (before min_eval_rows, no minimum was held out). Unlike other new
# settings, their defaults change the split, so a record that lacks them reads them here, not at their defaults.
SPLIT_BEFORE_RECORDED: dict[str, Any] = {"min_eval_rows": 0}


def split(
    data: ClassificationData, eval_fraction: float = 0.2, seed: int = 0, min_eval_rows: int = 0
) -> tuple[ClassificationData, ClassificationData]:
    """A seeded (train, eval) split, stratified by label so both keep the class balance and at least one row of each.

    At least `min_eval_rows` rows are held out where the data allows, never more than half of each label.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise InputError(f"dataset {data.name}: eval_fraction must be between 0 and 1, got {eval_fraction}")
    train: list[int] = []
    held_out: list[int] = []
    for label, indices in _indices_by_label(data, random.Random(seed)).items():
        if len(indices) < 2:
            raise InputError(f"dataset {data.name}: label {label} has {len(indices)} rows; a split needs at least 2")
        wanted = max(round(len(indices) * eval_fraction), min(math.ceil(min_eval_rows / 2), len(indices) // 2))
        n_eval = min(len(indices) - 1, max(1, wanted))
        held_out += indices[:n_eval]
        train += indices[n_eval:]
    return _subset(data, train), _subset(data, held_out)


@dataclass(frozen=True)
class Split:
    """How a dataset's rows are drawn and held out: declared once, the `split` section of a sweep and the settings of
    every discovery's `SplitSpec`."""

    limit: int | None = setting(
        None,
        "use a label-balanced subsample of this many rows (none: every row)",
        check=settings.optional(settings.at_least(2)),
    )
    eval_fraction: float = setting(0.2, "share of the rows held out for evaluation", check=settings.fraction)
    min_eval_rows: int = setting(
        100,
        "hold out at least this many rows where the data allows (at most half of each label)",
        check=settings.at_least(0),
    )

    def __post_init__(self) -> None:
        settings.validate(self)


@dataclass(frozen=True, kw_only=True)
class SplitSpec(Split):
    """Which rows a discovery trains and evaluates on: a dataset, the `Split` settings and the seed that draws them. A
    circuit records it so its rows can be drawn again."""

    dataset: str = setting(doc="csv:PATH, blimp:CONFIG, persona:NAME, builtin:NAME or an alias")
    split_seed: int = setting(0, "seed of the subsample and of the train/eval split", check=settings.at_least(0))

    @classmethod
    def of(cls, dataset: str, split: Split, split_seed: int) -> SplitSpec:
        """The spec that draws `dataset`'s rows with `split`'s settings under `split_seed`."""
        return cls(dataset=dataset, split_seed=split_seed, **dataclasses.asdict(split))

    def load(self) -> tuple[ClassificationData, ClassificationData]:
        """The (train, eval) rows."""
        rows = load_classification(self.dataset, limit=self.limit, seed=self.split_seed)
        return split(rows, self.eval_fraction, self.split_seed, self.min_eval_rows)


def _field(spec: str, index: int, record: Any, path: str) -> Any:
    """The value at dotted `path` in a request record, or an InputError naming the record and field."""
    value = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise InputError(f"requests {spec}: record {index} is missing field '{path}'")
        value = value[key]
    return value


def _string_field(spec: str, index: int, record: Any, path: str) -> str:
    """A required non-empty string field of a request record."""
    value = _field(spec, index, record, path)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"requests {spec}: record {index} field '{path}' must be a non-empty string, got {value!r}")
    return value


def _prompt_list(spec: str, index: int, record: dict[str, Any], key: str) -> list[str]:
    """An optional list of prompts (paraphrase or neighborhood); absent means empty."""
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise InputError(f"requests {spec}: record {index} field '{key}' must be a list of strings")
    return value


def _request(spec: str, index: int, record: Any) -> EditRequest:
    """One validated CounterFact-style record as an EditRequest."""
    prompt = _string_field(spec, index, record, "requested_rewrite.prompt")
    subject = _string_field(spec, index, record, "requested_rewrite.subject")
    target_true = _string_field(spec, index, record, "requested_rewrite.target_true.str")
    target_new = _string_field(spec, index, record, "requested_rewrite.target_new.str")
    if prompt.count("{}") != 1:
        raise InputError(f"requests {spec}: record {index} prompt {prompt!r} must contain '{{}}' once, for the subject")
    if target_new.strip() == target_true.strip():
        raise InputError(f"requests {spec}: record {index} target_new equals target_true ({target_new!r})")
    case_id = record.get("case_id", index)
    if not isinstance(case_id, int):
        raise InputError(f"requests {spec}: record {index} case_id must be an integer, got {case_id!r}")
    return EditRequest(
        case_id=case_id,
        prompt=prompt,
        subject=subject,
        target_true=target_true,
        target_new=target_new,
        paraphrase_prompts=_prompt_list(spec, index, record, "paraphrase_prompts"),
        neighborhood_prompts=_prompt_list(spec, index, record, "neighborhood_prompts"),
    )


def _read_request_records(spec: str, value: str) -> list[Any]:
    """The list of records in a JSON file of edit requests."""
    path = _existing_file("requests", spec, value)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"requests {spec}: {path} is not valid JSON ({_first_line(exc)})") from exc
    if not isinstance(records, list):
        raise InputError(f"requests {spec}: {path} must hold a JSON list of records, found {type(records).__name__}")
    return records


def load_requests(spec: str, limit: int | None = None) -> list[EditRequest]:
    """Load validated CounterFact-style edit requests (json:PATH or builtin:hierarchy); `limit` keeps the first K."""
    if limit is not None and limit < 1:
        raise InputError(f"requests {spec}: limit must be at least 1, got {limit}")
    scheme, value = _resolve(spec)
    if scheme == "json":
        records = _read_request_records(spec, value)
        if not records:
            raise InputError(f"requests {spec}: no records")
        requests = [_request(spec, i, record) for i, record in enumerate(records)]
    elif scheme == "builtin" and value in _BUILTIN_REQUESTS:
        requests = _BUILTIN_REQUESTS[value]()
    else:
        raise InputError(f"requests {spec}: unknown edit-request source; use {_REQUEST_FORMS} (alias: hierarchy)")
    return requests[:limit]
