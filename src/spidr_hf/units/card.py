"""
Parquet units of `spidr-hf extract` as a Hub dataset: the dataset card that `extract` writes into OUTPUT once the
whole job is done, and `spidr-hf push-units`, which uploads the parquet files and a card in one commit.
"""

import argparse
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from ..errors import SpidrError
from ..io.atomic_files import new_folder, write_text_atomically
from .formats import UnitsOutput

CARD_FILE = "README.md"
CARD_KEY = "spidr_hf_units"  # the card's YAML entry with what made the units (and that says spidr-hf wrote the card)
HUB_DATA_FOLDER = "data"  # where the parquet files go in the uploaded repository


def units_source(settings: dict, facts: dict, num_rows: int) -> dict:
    """What made the units, as the card records it. Local paths are not published: a model folder is named by its
    folder's name (its weights by their hash), the input by its folder's name."""
    model = settings["model"]
    return {
        "model": Path(model).name if Path(model).is_absolute() else model,
        "weights_sha256": settings["weights_sha256"],
        "layer": settings["layer"],
        "unit_kind": settings["units"],
        **facts,
        "deduplicated": settings["deduplicate"],
        "dtype": settings["dtype"],
        "input": Path(settings["input"]).name,
        "files": num_rows,
    }


def render_card(source: dict, data_pattern: str | None, deduplicated: bool) -> str:
    """A dataset card: YAML (the parquet files as the train split, `source`) and the same facts as a table."""
    data = DatasetCardData(tags=["audio", "speech", "discrete-units", "spidr"], **{CARD_KEY: source})
    if data_pattern is not None:
        data.configs = [{"config_name": "default", "data_files": [{"split": "train", "path": data_pattern}]}]
    columns = "`id`, `units` (int16), `num_frames`" + (", `durations` (frames per unit)" if deduplicated else "")
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


def write_dataset_card(output: Path, units_out: UnitsOutput, settings: dict, facts: dict) -> None:
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


def units_of(output: Path) -> tuple[UnitsOutput, dict]:
    """The finished parquet units of an extract OUTPUT folder and their card's source entry; one-line errors."""
    from .extract import read_settings

    settings = read_settings(output) if output.is_dir() else None
    if settings is None:
        raise SpidrError(f"{output} is not an output folder of spidr-hf extract (no extract.json)")
    if settings.get("units_format") != "parquet":
        raise SpidrError(f"{output} holds no parquet units: extract them with --units-format parquet")
    units_out = UnitsOutput(output / settings["units_file"], "parquet", bool(settings["deduplicate"]))
    source = read_card_source(output)
    if source is None or not units_out.parquet_files():
        raise SpidrError(f"The extraction into {output} is not finished (no dataset card yet): run it to the end")
    ids = [id for table in units_out.parquet_tables(columns=["id"]) for id in table.column("id").to_pylist()]
    if len(ids) != len(set(ids)) or len(ids) != source["files"]:
        raise SpidrError(f"{output} holds {len(ids)} rows for {source['files']} files: not the units its card says")
    return units_out, source


def write_hub_folder(output: Path, destination: Path) -> Path:
    """The repository as it will be uploaded: README.md and data/*.parquet, checked by loading it with datasets."""
    from datasets import load_dataset

    units_out, source = units_of(output)
    with new_folder(destination) as staging:
        (staging / HUB_DATA_FOLDER).mkdir()
        for path in units_out.parquet_files():
            shutil.copyfile(path, staging / HUB_DATA_FOLDER / path.name)
        card = render_card(source, f"{HUB_DATA_FOLDER}/*.parquet", units_out.deduplicate)
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        rows = load_dataset(str(staging), split="train")
        if rows.num_rows != source["files"]:
            raise SpidrError(f"The Hub folder of {output} loads {rows.num_rows} rows, not {source['files']}")
    return destination


def run(args: argparse.Namespace) -> int:
    from ..hub.push import check_repo_id, hub_api, upload_release

    repo_id = check_repo_id(args.repo_id)
    output = Path(args.output)
    if args.dry_run is not None:
        folder = write_hub_folder(output, args.dry_run)
        print(f"Wrote and checked {folder}; dry run, nothing uploaded.")
        return 0
    units_of(output)  # a folder that cannot be uploaded fails before the token is looked at
    api = hub_api()
    with tempfile.TemporaryDirectory(prefix="spidr-units-") as scratch:
        folder = write_hub_folder(output, Path(scratch) / "dataset")
        commit = upload_release(
            api, folder, repo_id, args.private, args.revision, args.create_pr, repo_type="dataset", what="units"
        )
    print(f"Uploaded {repo_id}: {commit.pr_url if args.create_pr else commit.commit_url}")
    return 0
