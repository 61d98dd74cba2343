"""
The evaluation report that `spidr-hf evaluate` writes as results.json and that the text table, the plots and the
model cards read: `EvaluationReport`, a list of `EvaluationResult` records with what was evaluated.

The file is the report's fields as a JSON object, the results as a list of objects:
`{"model", "dataset", "split", "num_abx_tokens", "results": [{"system", "representation", "layer", "metric",
"value"}, ...], "stored_kmeans_layer"}` (the last one may be absent: reports written before it have none). Every
report is checked when it is made, whether by the evaluator or read from a file.
"""

import json
import math
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple, Self, get_args

from ..io.atomic_files import write_text_atomically

System = Literal["model", "random_init", "log_mel"]
Representation = Literal["layer_results", "codebook", "kmeans", "log_mel"]
Metric = Literal[
    "abx_within",
    "abx_across",
    "pnmi",
    "phone_purity",
    "cluster_purity",
    "codebook_perplexity",
    "active_codewords",
    "bitrate",
]


class MetricFormat(NamedTuple):
    label: str
    format: str  # format spec of the value in tables


# In report order
METRICS: dict[Metric, MetricFormat] = {
    "abx_within": MetricFormat("ABX within (%)", ".2f"),
    "abx_across": MetricFormat("ABX across (%)", ".2f"),
    "pnmi": MetricFormat("PNMI", ".3f"),
    "phone_purity": MetricFormat("phone purity", ".3f"),
    "cluster_purity": MetricFormat("cluster purity", ".3f"),
    "codebook_perplexity": MetricFormat("codebook perplexity", ".1f"),
    "active_codewords": MetricFormat("active codewords", ".0f"),
    "bitrate": MetricFormat("bitrate (bit/s)", ".1f"),
}
assert tuple(METRICS) == get_args(Metric)  # the type and the table name the same metrics, in the same order

Row = tuple[System, Representation, int | None]  # what a figure is of: (system, representation, layer)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class EvaluationResult:
    """One figure: `metric` of the `representation` of `system` at `layer` (None for layer-less log-mel features)."""

    system: System
    representation: Representation
    layer: int | None
    metric: Metric
    value: float

    def __post_init__(self) -> None:
        for name, kind in (("system", System), ("representation", Representation), ("metric", Metric)):
            allowed = get_args(kind)
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name!r} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.layer is not None and not _is_integer(self.layer):
            raise ValueError(f"'layer' must be an integer or null, got {self.layer!r}.")
        # NaN (an ABX score without triplets) is no figure: the evaluator leaves it out, and a file may not hold one
        if not isinstance(self.value, int | float) or isinstance(self.value, bool) or not math.isfinite(self.value):
            raise ValueError(f"'value' must be a finite number, got {self.value!r}.")

    @property
    def row(self) -> Row:
        return (self.system, self.representation, self.layer)


@dataclass(frozen=True)
class EvaluationReport:
    """The figures of one `spidr-hf evaluate` run, in the order they were measured."""

    model: str
    dataset: str
    split: str
    num_abx_tokens: int
    results: Sequence[EvaluationResult]  # kept as a tuple
    # The layer whose model k-means units come from the centroids stored with the model (`spidr-hf kmeans`), not
    # from a k-means fitted by the evaluation
    stored_kmeans_layer: int | None = None

    def __post_init__(self) -> None:
        for name in ("model", "dataset", "split"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name!r} must be a string, got {getattr(self, name)!r}.")
        if not _is_integer(self.num_abx_tokens):
            raise ValueError(f"'num_abx_tokens' must be an integer, got {self.num_abx_tokens!r}.")
        if self.stored_kmeans_layer is not None and not _is_integer(self.stored_kmeans_layer):
            raise ValueError(f"'stored_kmeans_layer' must be an integer or null, got {self.stored_kmeans_layer!r}.")
        object.__setattr__(self, "results", tuple(self.results))  # frozen: a list given is kept as a tuple
        if not all(isinstance(result, EvaluationResult) for result in self.results):
            raise TypeError("results must be EvaluationResult records.")

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """The report of a results.json object; a `ValueError` names the first field that does not fit."""
        values = _field_values(data, cls, "")
        if not isinstance(values["results"], list):
            raise ValueError(f"'results' must be a list, got {values['results']!r}.")
        results = []
        for index, record in enumerate(values["results"]):
            where = f"results[{index}]"
            fields_of_record = _field_values(record, EvaluationResult, where)
            try:
                results.append(EvaluationResult(**fields_of_record))
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
        return cls(**{**values, "results": tuple(results)})

    def to_dict(self) -> dict[str, Any]:
        """The results.json object."""
        report = asdict(self)
        report["results"] = list(report["results"])
        return report

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read and check a results.json file; errors are one line naming the file and the field."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"Cannot read the evaluation JSON {path}: {error}") from error
        try:
            return cls.from_dict(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def dump(self, path: str | Path) -> None:
        """Write the report as results.json (indented, one field a line)."""
        write_text_atomically(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self) -> dict[Row, dict[Metric, float]]:
        """metric -> value for each (system, representation, layer), rows in the order they were measured."""
        table: dict[Row, dict[Metric, float]] = {}
        for result in self.results:
            table.setdefault(result.row, {})[result.metric] = result.value
        return table

    def metrics(self) -> list[Metric]:
        """The metrics the report has figures of, in report order (METRICS)."""
        measured = {result.metric for result in self.results}
        return [metric for metric in METRICS if metric in measured]


def _field_values(data: Any, kind: type, where: str) -> dict[str, Any]:
    """
    The values of the fields of dataclass `kind` in the JSON object `data` (null counts as present; a field with a
    default may be absent).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'the report'} must be a JSON object, got {type(data).__name__}.")
    missing = [field.name for field in fields(kind) if field.name not in data and field.default is MISSING]
    if missing:
        raise ValueError(f"{where + ': ' if where else ''}missing {', '.join(map(repr, missing))}.")
    return {field.name: data[field.name] for field in fields(kind) if field.name in data}
