"""
`spidr-hf push-units`: the finished parquet units of a `spidr-hf extract` OUTPUT as a Hub dataset repository (the
parquet files under data/ and their card), checked by loading it with `datasets`, uploaded in one commit.
"""

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import SpidrError
from ..io.atomic_files import new_folder
from ..units.card import CARD_FILE, read_card_source, render_card
from ..units.formats import UnitsOutput
from ..units.record import RECORD_FILE, read_record
from .push import check_repo_id, hub_api, upload_release

HUB_DATA_FOLDER = "data"  # where the parquet files go in the uploaded repository


def units_of(output: Path) -> tuple[UnitsOutput, dict]:
    """The finished parquet units of an extract OUTPUT folder and their card's source entry; one-line errors."""
    settings = read_record(output) if output.is_dir() else None
    if settings is None:
        raise SpidrError(f"{output} is not an output folder of spidr-hf extract (no {RECORD_FILE})")
    units_out = settings.units_output(output)
    if units_out is None or units_out.format != "parquet":
        raise SpidrError(f"{output} holds no parquet units: extract them with --units-format parquet")
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


def push_units(
    output: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    dry_run: str | os.PathLike | None = None,
) -> str:
    """
    Upload the finished parquet units of the extract folder `output` and their card to the dataset repository
    `repo_id` in one commit, checked by loading them with `datasets` first; with `dry_run`, write the repository's
    folder there and upload nothing. Returns the commit (or pull request) URL, or the folder.
    """
    repo_id = check_repo_id(repo_id)
    output = Path(output)
    if dry_run is not None:
        if Path(dry_run).resolve().is_relative_to(output.resolve()):
            raise SpidrError(
                f"--dry-run {dry_run} is inside {output}: its copies of the parquet files would be read with them by "
                f'load_dataset("parquet", data_files=f"{{OUTPUT}}/**/*.parquet"); write it outside the extract folder'
            )
        return str(write_hub_folder(output, Path(dry_run)))
    units_of(output)  # a folder that cannot be uploaded fails before the token is looked at
    api = hub_api()
    with tempfile.TemporaryDirectory(prefix="spidr-units-") as scratch:
        folder = write_hub_folder(output, Path(scratch) / "dataset")
        commit = upload_release(api, folder, repo_id, private, revision, create_pr, repo_type="dataset", what="units")
    return commit.pr_url if create_pr else commit.commit_url
