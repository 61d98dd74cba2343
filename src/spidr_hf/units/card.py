"""
The dataset card of the parquet units of `spidr-hf extract` (OUTPUT/README.md, written once the whole job is done):
YAML metadata that makes the folder a `datasets` dataset and records what made the units, and the same facts as a
table. `spidr-hf push-units` (hub/push_units.py) uploads it with the parquet files.
"""

from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from ..io.atomic_files import write_text_atomically
from .formats import UnitsOutput, units_dtype
from .record import ExtractSettings

CARD_FILE = "README.md"
CARD_KEY = "spidr_hf_units"  # the card's YAML entry with what made the units (and that says spidr-hf wrote the card)


def units_source(settings: ExtractSettings, facts: dict, num_rows: int) -> dict:
    """What made the units, as the card records it. Local paths are not published: a model folder is named by its
    folder's name (its weights by their hash), the input by its folder's name."""
    model = settings.model
    return {
        "model": Path(model).name if Path(model).is_absolute() else model,
        "weights_sha256": settings.weights_sha256,
        "layer": settings.layer,
        "unit_kind": settings.units,
        **facts,
        "deduplicated": settings.deduplicate,
        "dtype": settings.dtype,
        "input": Path(settings.input).name,
        "files": num_rows,
    }


def render_card(source: dict, data_pattern: str | None, deduplicated: bool) -> str:
    """A dataset card: YAML (the parquet files as the train split, `source`) and the same facts as a table."""
    data = DatasetCardData(tags=["audio", "speech", "discrete-units", "spidr"], **{CARD_KEY: source})
    if data_pattern is not None:
        data.configs = [{"config_name": "default", "data_files": [{"split": "train", "path": data_pattern}]}]
    dtype = units_dtype(source.get("num_units"))
    columns = f"`id`, `units` ({dtype}), `num_frames`" + (", `durations` (frames per unit)" if deduplicated else "")
    rows = "\n".join(f"| {key} | {value} |" for key, value in source.items())
    return f"""---
{data.to_yaml()}
---

# Discrete speech units

{source["unit_kind"]} units of layer {source["layer"]} of {source["model"]} for every audio file of
`{source["input"]}`, one row per file ({columns}), written by `spidr-hf extract`.

| | |
|---|---|
{rows}

```python
from datasets import load_dataset

units = load_dataset("REPO_OR_FOLDER", split="train")
```
"""


def read_card_source(folder: Path) -> dict | None:
    """The `CARD_KEY` entry of folder/README.md (None: no card, or a card spidr-hf did not write)."""
    path = folder / CARD_FILE
    if not path.is_file():
        return None
    try:
        data = DatasetCard.load(path).data.to_dict()
    except Exception:  # a README that is not a card at all
        return None
    source = data.get(CARD_KEY)
    return source if isinstance(source, dict) else None


def write_dataset_card(output: Path, units_out: UnitsOutput, settings: ExtractSettings, facts: dict) -> None:
    """OUTPUT/README.md for the parquet units (loadable with `load_dataset(OUTPUT)`); a README.md that spidr-hf did
    not write is left alone."""
    path = output / CARD_FILE
    if path.exists() and read_card_source(output) is None:
        print(f"{path} exists and is not a units card of spidr-hf: left as it is, no card written")
        return
    pattern = None
    if units_out.path.resolve().is_relative_to(output.resolve()):
        pattern = f"{units_out.path.resolve().relative_to(output.resolve()).as_posix()}/*.parquet"
    source = units_source(settings, facts, units_out.num_rows())
    write_text_atomically(path, render_card(source, pattern, units_out.deduplicate))
