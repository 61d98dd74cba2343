"""
The package as users install it: a wheel built from the sources, installed into a fresh virtualenv and run from a
folder outside the repository, so that nothing (card templates included) can come from the source tree.
"""

import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from transformers import pipeline

from spidr_hf import SpidrFeaturesPipeline

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[1]
REPO_ID = "me/tiny-spidr"


def run(command: list, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `command`, which must succeed, without PYTHONPATH: the virtualenv alone decides what is imported."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["HF_MODULES_CACHE"] = str(cwd / "modules")
    completed = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, f"{command} failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}"
    return completed


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A virtualenv holding the wheel of this repository; torch, transformers & co. come from this interpreter's."""
    root = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the sources: an in-tree build would leave build/ and *.egg-info in the repository
    sources = root / "sources"
    sources.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPOSITORY / name, sources / name)
    shutil.copytree(REPOSITORY / "src", sources / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    run([*build, "--wheel-dir", root / "dist", sources], cwd=root)
    (wheel,) = (root / "dist").glob("spidr_hf-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=root)
    python = venv / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        # Run from a virtualenv, whose packages --system-site-packages does not reach: add them after the new ones
        purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
        (Path(purelib.stdout.strip()) / "_outer_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # pip of the outer environment, run by the virtualenv's interpreter, installs into the virtualenv. The editable
    # install of the outer environment has the same version: install anyway (into the virtualenv, which comes first).
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel], cwd=root)
    return venv


def test_the_virtualenv_imports_the_installed_wheel(venv, tmp_path):
    code = """
        import sys, sysconfig
        from importlib.resources import files
        import spidr_hf

        print(sysconfig.get_paths()["purelib"])
        print(spidr_hf.__file__)
        print(files("spidr_hf.hub").joinpath("model_cards", "template.md").is_file())
    """
    output = run([venv / "bin" / "python", "-c", textwrap.dedent(code)], tmp_path).stdout
    purelib, module_file, has_template = output.split()
    assert Path(purelib).is_relative_to(venv)
    assert Path(module_file) == Path(purelib) / "spidr_hf" / "__init__.py"  # not this repository's src/
    assert has_template == "True"
    assert not Path(module_file).is_relative_to(REPOSITORY)


def test_push_dry_run_and_pipeline_from_the_wheel(venv, source_dir, tmp_path):
    spidr_hf_command = venv / "bin" / "spidr-hf"
    help_text = run([spidr_hf_command, "push", "--help"], tmp_path).stdout
    assert "--dry-run" in help_text and "spidr-base" in help_text  # the official cards' names, from official.toml

    release = tmp_path / "release"
    arguments = ["push", source_dir, "--repo-id", REPO_ID, "--license", "cc-by-4.0", "--dry-run", release]
    assert "dry run, nothing uploaded" in run([spidr_hf_command, *arguments], tmp_path).stdout
    card = ModelCard.load(release / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.model_name == REPO_ID
    assert f'pipeline("spidr-features", model="{REPO_ID}", trust_remote_code=True)' in card.text
    assert (release / "model.safetensors").is_file() and (release / "pipeline_spidr.py").is_file()

    probe = np.random.default_rng(0).standard_normal(24000).astype(np.float32)
    np.save(tmp_path / "probe.npy", probe)
    code = f"""
        import numpy as np
        from transformers import pipeline
        import spidr_hf

        features = pipeline("spidr-features", model={str(source_dir)!r}, device="cpu")
        assert type(features) is spidr_hf.SpidrFeaturesPipeline, type(features)
        np.save("features.npy", features(np.load("probe.npy"), sampling_rate=16000, layer=3)["features"])
        print(spidr_hf.__file__)
    """
    module_file = run([venv / "bin" / "python", "-c", textwrap.dedent(code)], tmp_path).stdout.strip()
    assert Path(module_file).is_relative_to(venv)
    expected = pipeline("spidr-features", model=str(source_dir), device="cpu")
    assert isinstance(expected, SpidrFeaturesPipeline)
    expected_features = expected(probe, sampling_rate=16000, layer=3)["features"]
    np.testing.assert_allclose(np.load(tmp_path / "features.npy"), expected_features, atol=1e-6)
