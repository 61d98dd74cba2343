"""
Where `spidr-hf extract` writes units, in three formats that every shard of a job writes without touching another's:

- `txt` (`id<TAB>u1 u2 ...` lines) and `jsonl` (`{"id": ..., "units": [...]}` lines): each shard appends complete
  lines to its own part file in a hidden folder beside the units file (`.units.txt.parts/00000-of-00002.txt`); when
  the last file of the whole job is done, the process that finishes it assembles the units file, one line per file in
  the order of the input, and removes the parts.
- `parquet`: each shard writes files of up to `PARQUET_ROWS` rows into the units folder
  (`units/00000-of-00002-00000.parquet`), each complete or absent; `datasets.load_dataset("parquet",
  data_files=f"{OUTPUT}/**/*.parquet")` reads them as one dataset with a row per audio file: `id`, `units` (int16,
  or int32 beyond 32768 units: `units_dtype`), `num_frames` and, deduplicated, `durations` (frames per unit).

Files whose units are written are found again on a rerun: a kill loses at most the lines being written (a cut-off
last line is dropped) or the rows not yet in a parquet file.
"""

import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..defaults import UNITS_FORMATS
from ..errors import SpidrError
from ..io.atomic_files import write_atomically, write_text_atomically, writing
from ..io.sharding import Shard
from ..model.pipeline_spidr import run_starts

PARQUET_ROWS = 1000  # rows per parquet file: a kill loses at most this many files' units
PARTS_SUFFIX = ".parts"


def units_dtype(num_units: int | None) -> str:
    """The integer type of a parquet `units` column: the smallest that holds every unit id below `num_units` (int16
    up to 32768 units, the usual sizes; int32 beyond, and when the number is not known)."""
    if num_units is not None and num_units <= np.iinfo(np.int16).max + 1:
        return "int16"
    if num_units is not None and num_units > np.iinfo(np.int32).max + 1:
        raise SpidrError(f"{num_units} units cannot be stored: at most {np.iinfo(np.int32).max + 1}")
    return "int32"


def default_units_path(output: Path, units_format: str) -> Path:
    return output / ("units" if units_format == "parquet" else f"units.{units_format}")


def units_format_of(units_file: str | os.PathLike | None, units_format: str | None) -> str:
    """The format asked for, else the units file's suffix (.jsonl, .parquet or a folder for parquet), else txt."""
    if units_format is not None:
        if units_format not in UNITS_FORMATS:
            raise SpidrError(f"Unknown units format {units_format!r}: choose among {list(UNITS_FORMATS)}")
        return units_format
    suffix = Path(units_file).suffix if units_file is not None else ""
    return {".jsonl": "jsonl", ".parquet": "parquet"}.get(suffix, "txt")


def check_ids(ids: Iterable[str], units_format: str) -> None:
    """Ids that a text line could not hold are refused before any work (jsonl and parquet hold any)."""
    if units_format != "txt":
        return
    for id in ids:
        if len(f"{id}\n".splitlines()) != 1 or "\t" in id:
            raise SpidrError(
                f"The file name {id!r} holds a tab or a line break, which an 'id<TAB>units' line cannot hold: rename "
                "it, or write --units-format jsonl or parquet"
            )


class UnitsOutput:
    """The units of one job in one format at `path` (a file for txt/jsonl, a folder for parquet), of an encoder of
    `num_units` units (which decides the parquet column's type: `units_dtype`)."""

    def __init__(self, path: Path, units_format: str, deduplicate: bool, num_units: int | None = None):
        self.path = path
        self.format = units_format
        self.deduplicate = deduplicate
        self.num_units = num_units
        self.dtype = units_dtype(num_units)
        self._rows: list[dict] = []
        self._part: Path | None = None
        self._file = None

    # What exists -----------------------------------------------------------------------------------------------

    @property
    def parts_folder(self) -> Path:
        return self.path.with_name(f".{self.path.name}{PARTS_SUFFIX}")

    def exists(self) -> bool:
        """Whether anything of these units was written (the file or folder, or parts of it)."""
        return self.path.exists() or self.parts_folder.exists()

    def done_ids(self) -> set[str]:
        """Ids whose units are written, by any shard of any run."""
        if self.format == "parquet":
            return {id for table in self.parquet_tables(columns=["id"]) for id in table.column("id").to_pylist()}
        return set(self._complete_lines())

    def _complete_lines(self) -> dict[str, str]:
        """id -> line (with its newline) of the units file and the parts; the first line of an id wins."""
        lines: dict[str, str] = {}
        parts = sorted(self.parts_folder.iterdir()) if self.parts_folder.is_dir() else []
        for path in [self.path, *parts]:
            if path.is_file():
                for id, line in self._read_lines(path):
                    lines.setdefault(id, line)
        return lines

    def _read_lines(self, path: Path) -> list[tuple[str, str]]:
        """(id, line) of each complete line: a last line cut off by an interrupted run is left out. A line extract
        cannot have written is an error naming the line."""
        content = path.read_bytes()
        complete = content[: content.rfind(b"\n") + 1]
        try:
            text = complete.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SpidrError(f"{path} is not UTF-8 text: {error}") from error
        # split("\n"), not splitlines(): an id may hold \x0c, \x85 or \u2028, which splitlines would cut at
        lines = text.split("\n")[:-1]
        return [(self._line_id(line, path, number), line + "\n") for number, line in enumerate(lines, 1) if line]

    def _line_id(self, line: str, path: Path, number: int) -> str:
        if self.format == "jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not (isinstance(row, dict) and isinstance(row.get("id"), str) and isinstance(row.get("units"), list)):
                raise SpidrError(f'{path}, line {number}: not a {{"id", "units"}} JSON line of spidr-hf extract')
            return row["id"]
        id, tab, _ = line.partition("\t")
        if not id or not tab:
            raise SpidrError(f"{path}, line {number}: not an 'id<TAB>units' line of spidr-hf extract")
        return id

    def parquet_files(self) -> list[Path]:
        return sorted(self.path.glob("*.parquet")) if self.path.is_dir() else []

    def parquet_tables(self, columns: Sequence[str] | None = None):
        import pyarrow.parquet as pq

        for path in self.parquet_files():
            try:
                yield pq.read_table(path, columns=columns)
            except Exception as error:  # pyarrow raises several types for a file that is not parquet
                raise SpidrError(f"{path} is not a parquet file of spidr-hf extract: {error}") from error

    # Writing one shard -----------------------------------------------------------------------------------------

    def claim(self) -> None:
        """Make these units exist before any is written (the parts folder, or the parquet folder), so that a job into
        another output folder that names the same units file finds it taken (`extract` does it under a lock)."""
        with writing(self.path):
            (self.path if self.format == "parquet" else self.parts_folder).mkdir(parents=True, exist_ok=True)

    def open(self, shard: Shard) -> None:
        """Start writing `shard`'s units (this process holds the shard's lock)."""
        self._shard = shard
        if self.format == "parquet":
            self.path.mkdir(parents=True, exist_ok=True)
            return
        self._part = self.parts_folder / f"{shard.name}.{self.format}"
        with writing(self._part):
            self.parts_folder.mkdir(parents=True, exist_ok=True)
        if self._part.is_file():  # a line cut off by a killed run of this shard is written again
            content = self._part.read_bytes()
            with open(self._part, "r+b") as file:
                file.truncate(content.rfind(b"\n") + 1)
        with writing(self._part):
            self._file = open(self._part, "a", encoding="utf-8")  # noqa: SIM115 (open across writes, closed by close())

    def write(self, id: str, units: np.ndarray) -> None:
        """One file's units (frame by frame; merged into runs here when deduplicating)."""
        if self.num_units is not None and len(units) and not 0 <= units.min() <= units.max() < self.num_units:
            raise RuntimeError(f"The units of {id} go from {units.min()} to {units.max()}, not below {self.num_units}")
        durations = None
        if self.deduplicate:
            starts = run_starts(units)
            durations = np.diff(np.r_[starts, len(units)])
            values = units[starts]
        else:
            values = units
        if self.format == "parquet":
            row = {"id": id, "units": values.astype(self.dtype), "num_frames": len(units)}
            if durations is not None:
                row["durations"] = durations.astype(np.int32)
            self._rows.append(row)
            if len(self._rows) >= PARQUET_ROWS:
                self._flush_rows()
            return
        values = [int(unit) for unit in values]
        if self.format == "jsonl":
            line = json.dumps({"id": id, "units": values})
        else:
            line = f"{id}\t{' '.join(map(str, values))}"
        with writing(self._part):
            self._file.write(line + "\n")  # one write per line: a kill cuts off at most this line
            self._file.flush()

    def _flush_rows(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows:
            return
        taken = {path.name for path in self.parquet_files()}
        number = next(n for n in range(len(taken) + 1) if f"{self._shard.name}-{n:05d}.parquet" not in taken)
        fields = [("id", pa.string()), ("units", pa.list_(pa.from_numpy_dtype(self.dtype))), ("num_frames", pa.int32())]
        if self.deduplicate:
            fields.append(("durations", pa.list_(pa.int32())))
        table = pa.Table.from_pylist(self._rows, schema=pa.schema(fields))
        path = self.path / f"{self._shard.name}-{number:05d}.parquet"
        write_atomically(path, lambda partial: pq.write_table(table, partial))
        self._rows = []

    def close(self) -> None:
        """Write what is pending; done after each shard's work, and when it is interrupted (what is complete stays)."""
        if self.format == "parquet":
            self._flush_rows()
        elif self._file is not None:
            file, self._file = self._file, None
            with writing(self._part):  # a full disk can refuse the last buffered line here too
                file.close()

    # The whole job ---------------------------------------------------------------------------------------------

    def assemble(self, ids_in_order: Sequence[str]) -> None:
        """
        Once every file's units are written (by whichever shards): txt/jsonl become one units file, one line per
        file in input order, and the parts go. Several processes may do it at once (under the job's lock, see
        `extract`); a second one finds the parts gone and the file complete.
        """
        if self.format == "parquet":
            return
        lines = self._complete_lines()
        missing = [id for id in ids_in_order if id not in lines]
        if missing:
            raise RuntimeError(f"assemble() with {len(missing)} files' units missing")
        write_text_atomically(self.path, "".join(lines[id] for id in ids_in_order))
        shutil.rmtree(self.parts_folder, ignore_errors=True)

    def iter_units(self) -> Iterator[tuple[str, np.ndarray]]:
        """(id, units as written: merged runs when deduplicated) of every file written so far, one file at a time:
        memory holds one parquet file of rows, or one line, whatever the number of files."""
        if self.format == "parquet":
            for table in self.parquet_tables(columns=["id", "units"]):
                for id, values in zip(table.column("id").to_pylist(), table.column("units").to_pylist(), strict=True):
                    yield id, np.asarray(values, dtype=np.int64)
            return
        # A finished job's units file has every line once; parts of unfinished shards are read whole
        lines = self._complete_lines().items() if self.parts_folder.is_dir() else self._file_lines(self.path)
        for id, line in lines:
            if self.format == "jsonl":
                values = json.loads(line)["units"]
            else:
                values = line.rstrip("\n").partition("\t")[2].split()
            yield id, np.asarray([int(value) for value in values], dtype=np.int64)

    def _file_lines(self, path: Path) -> Iterator[tuple[str, str]]:
        """(id, line) of each complete line of `path`, read line by line; an id's first line wins."""
        seen: set[str] = set()
        with path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                if not raw.endswith(b"\n"):  # cut off by an interrupted run
                    break
                try:  # split at "\n" only (binary lines): an id may hold \x0c, \x85 or \u2028
                    line = raw.decode("utf-8")[:-1]
                except UnicodeDecodeError as error:
                    raise SpidrError(f"{path} is not UTF-8 text: {error}") from error
                if line:
                    id = self._line_id(line, path, number)
                    if id not in seen:
                        seen.add(id)
                        yield id, line + "\n"

    def num_rows(self) -> int:
        """Files written so far: a finished job's units file is counted line by line, as `iter_units` reads it
        (memory holds the ids, not the units)."""
        if self.format == "parquet":
            return sum(table.num_rows for table in self.parquet_tables(columns=["id"]))
        if self.parts_folder.is_dir():
            return len(self._complete_lines())
        return sum(1 for _ in self._file_lines(self.path)) if self.path.is_file() else 0
