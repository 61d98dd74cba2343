"""
Unit-quality evaluation of speech representations: ABX discriminability (`abx_error`), PNMI and related unit
statistics (`units_quality`), and the whole report for a SpidR model on a phone-aligned corpus or a ZeroSpeech-layout
set (`evaluate_model`; `load_item_set` and `read_alignments` read such a set and its phone alignments).
Both metrics are also `evaluate` modules: `evaluate.load(metric_path("abx"))`, `evaluate.load(metric_path(
"units_quality"))`.
"""

from pathlib import Path

from .abx import abx_error, dtw
from .evaluator import evaluate_model
from .features import log_mel
from .items import AbxItem, frame_span, read_item_file, write_item_file
from .standard import load_item_set, read_alignments
from .units_quality import bitrate, cooccurrence, frame_labels, units_quality

METRICS_DIR = Path(__file__).parent / "metrics"


def metric_path(name: str) -> str:
    """Folder of the `evaluate` metric module `name` ("abx" or "units_quality"), for `evaluate.load`."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"Unknown metric {name!r}: choose 'abx' or 'units_quality'")
    return str(path)


__all__ = [
    "AbxItem",
    "abx_error",
    "bitrate",
    "cooccurrence",
    "dtw",
    "evaluate_model",
    "frame_labels",
    "frame_span",
    "load_item_set",
    "log_mel",
    "metric_path",
    "read_alignments",
    "read_item_file",
    "units_quality",
    "write_item_file",
]
