"""
Fetch the common model tests of the installed transformers version (`ModelTesterMixin`, `ConfigTester`,
`SequenceFeatureExtractionTestMixin`) from its source distribution on PyPI, for tests/test_transformers_common.py.

    python scripts/fetch_transformers_tests.py      # `scripts/install.sh dev` runs it

They are unpacked into a cache folder outside the repository (`transformers_tests_folder()`:
$SPIDR_HF_TRANSFORMERS_TESTS, else ~/.cache/spidr-hf/transformers-tests/VERSION), never into it: the tests run offline
from there. A folder that is already complete is kept as it is.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# The files the SpidR common tests import: their presence is what "complete" means
REQUIRED_FILES = (
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_sequence_feature_extraction_common.py",
    "test_feature_extraction_common.py",
)


def installed_transformers_version() -> str:
    from importlib.metadata import version

    return version("transformers")


def transformers_tests_folder(version: str | None = None) -> Path:
    """The folder holding `tests/` of transformers `version` (the installed one by default)."""
    override = os.environ.get("SPIDR_HF_TRANSFORMERS_TESTS")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "spidr-hf" / "transformers-tests" / (version or installed_transformers_version())


def is_complete(folder: Path) -> bool:
    return all((folder / "tests" / name).is_file() for name in (*REQUIRED_FILES, "__init__.py"))


def fetch(version: str, folder: Path) -> None:
    """Download the sdist of transformers `version` with pip and unpack its `tests/` into `folder/tests`."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".transformers-tests-", dir=folder.parent) as scratch:
        download = Path(scratch) / "download"
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, "--dest", str(download), f"transformers=={version}"], check=True)
        (archive,) = download.glob("transformers-*.tar.gz")
        prefix = f"{archive.name.removesuffix('.tar.gz')}/tests/"
        unpacked = Path(scratch) / "unpacked"
        with tarfile.open(archive) as sdist:
            members = [member for member in sdist.getmembers() if member.name.startswith(prefix)]
            sdist.extractall(unpacked, members=members, filter="data")
        staged = Path(scratch) / "folder"
        staged.mkdir()
        (unpacked / prefix).rename(staged / "tests")
        # The repository's tests/ is a package (its files import each other relatively, and
        # test_configuration_common.py loads its `__init__.py`); the sdist leaves the empty file out
        (staged / "tests" / "__init__.py").touch()
        if not is_complete(staged):
            missing = [name for name in REQUIRED_FILES if not (staged / "tests" / name).is_file()]
            raise SystemExit(f"The transformers {version} source distribution lacks tests/{missing}")
        if folder.exists():  # an incomplete earlier fetch
            shutil.rmtree(folder)
        staged.rename(folder)  # whole or not at all


def main() -> int:
    version = installed_transformers_version()
    folder = transformers_tests_folder(version)
    if is_complete(folder):
        print(f"transformers {version} tests: already in {folder}")
        return 0
    fetch(version, folder)
    print(f"transformers {version} tests: unpacked into {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
