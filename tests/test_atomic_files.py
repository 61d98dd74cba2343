"""The three write primitives every spidr-hf output goes through: nothing half written, nothing of the old lost."""

import os
import tempfile
from pathlib import Path

import pytest

from spidr_hf.data.audio import audio_files
from spidr_hf.io import atomic_files
from spidr_hf.io.atomic_files import new_folder, replace_in_folder, write_atomically, write_text_atomically


class Interrupted(Exception):
    pass


def test_a_failed_write_keeps_the_old_file_and_leaves_no_side_file(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    target.write_text("old")

    def write_then_fail(partial: Path) -> None:
        partial.write_text("half of the ne")
        raise Interrupted

    with pytest.raises(Interrupted):
        write_atomically(target, write_then_fail)
    assert target.read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["record.json"]
    write_text_atomically(target, "new")
    assert target.read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["record.json"]


def test_a_side_file_left_by_a_kill_is_hidden_from_audio_listings(tmp_path: Path) -> None:
    # A SIGKILL skips the cleanup: what it leaves must not pass for an audio file (or a `.pt` output)
    partial = atomic_files.partial_path(tmp_path / "speaker" / "utt.wav")
    partial.parent.mkdir()
    partial.write_bytes(b"RIFF")
    assert partial.parent == tmp_path / "speaker" and partial.name.startswith(".")
    assert audio_files(tmp_path) == []
    assert list(tmp_path.rglob("*.pt")) == list(tmp_path.rglob("*.wav")) == []


def test_a_new_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    destination = tmp_path / "release"
    with pytest.raises(Interrupted), new_folder(destination) as staging:
        (staging / "model.safetensors").write_bytes(b"weights")
        raise Interrupted
    assert list(tmp_path.iterdir()) == []
    with new_folder(destination) as staging:
        (staging / "model.safetensors").write_bytes(b"weights")
        (staging / "sub").mkdir()
        (staging / "sub" / "code.py").write_text("x = 1")
        assert not destination.exists()
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*")) == [
        "release",
        "release/model.safetensors",
        "release/sub",
        "release/sub/code.py",
    ]
    umask = os.umask(0)
    os.umask(umask)
    assert destination.stat().st_mode & 0o777 == 0o777 & ~umask  # not the staging folder's private 0700
    with pytest.raises(ValueError, match="not an empty folder"), new_folder(destination):
        pass


def test_replacing_in_a_folder_keeps_its_other_files_and_replaces_the_last_file_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name, text in {"config.json": "old config", "weights": "old weights", "checkpoint": "mine"}.items():
        (folder / name).write_text(text)

    with pytest.raises(Interrupted), replace_in_folder(folder, last="config.json") as staging:
        (staging / "weights").write_text("new weights")
        raise Interrupted
    assert {path.name: path.read_text() for path in folder.iterdir()} == {
        "config.json": "old config",
        "weights": "old weights",
        "checkpoint": "mine",
    }

    # Interrupted between two renames: every file but the last is new, the last still describes the old state
    real_replace = os.replace

    def replace_all_but_config(source, target) -> None:
        if Path(target).name == "config.json":
            raise Interrupted
        real_replace(source, target)

    monkeypatch.setattr(atomic_files.os, "replace", replace_all_but_config)
    with pytest.raises(Interrupted), replace_in_folder(folder, last="config.json") as staging:
        for name in ("config.json", "weights", "z-code.py"):  # config.json sorts first: it must still go last
            (staging / name).write_text(f"new {name}")
    assert {path.name: path.read_text() for path in folder.iterdir()} == {
        "config.json": "old config",
        "weights": "new weights",
        "z-code.py": "new z-code.py",
        "checkpoint": "mine",
    }
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no staging folder left

    monkeypatch.setattr(atomic_files.os, "replace", real_replace)
    (folder / "config.json").chmod(0o640)
    with replace_in_folder(folder, last="config.json") as staging:
        (staging / "config.json").write_text("new config")
        (staging / "config.json").chmod(0o600)  # as safetensors creates its files
        (staging / "new.txt").write_text("new file")
        (staging / "new.txt").chmod(0o600)
    assert (folder / "config.json").read_text() == "new config"
    assert (folder / "config.json").stat().st_mode & 0o777 == 0o640  # the replaced file's mode
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "new.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (folder / "checkpoint").read_text() == "mine"


def test_a_staging_folder_taken_for_abandoned_before_it_is_locked_is_made_again(tmp_path, monkeypatch) -> None:
    # Another run's sweep of abandoned staging folders between this run's mkdtemp and its lock: the sweep finds the
    # folder unlocked and removes it (flock locks of two descriptors conflict within one process as between two).
    make_folder = tempfile.mkdtemp
    swept: list[str] = []

    def mkdtemp_then_another_run_sweeps(*args, **kwargs) -> str:
        folder = make_folder(*args, **kwargs)
        if not swept:
            swept.append(folder)
            with atomic_files.staging_folder(tmp_path, ".release.staging-"):
                assert not Path(folder).exists()
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_then_another_run_sweeps)
    with new_folder(tmp_path / "release") as staging:
        assert staging.is_dir() and str(staging) != swept[0]
        (staging / "model.safetensors").write_bytes(b"weights")
    assert [path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*")] == [
        "release",
        "release/model.safetensors",
    ]


def test_abandoned_staging_folders_are_removed_and_those_in_use_kept(tmp_path: Path) -> None:
    abandoned = tmp_path / ".release.staging-dead"
    (abandoned / "sub").mkdir(parents=True)
    (abandoned / "sub" / "weights").write_bytes(b"half")
    (tmp_path / ".release.staging-file").write_text("not a folder")  # not ours to remove: kept
    with atomic_files.staging_folder(tmp_path, ".release.staging-") as in_use:
        with atomic_files.staging_folder(tmp_path, ".release.staging-") as other:
            assert in_use.is_dir() and other.is_dir()
        assert not abandoned.exists() and in_use.is_dir() and not other.exists()
    assert [path.name for path in tmp_path.iterdir()] == [".release.staging-file"]
