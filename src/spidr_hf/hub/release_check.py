"""
Load a release folder the way a user without `spidr_hf` does, and run both pipelines on a probe signal.

Run as a script in a fresh interpreter, `python -I release_check.py FOLDER PROBE.npy OUT.npz pretrained LAYER` (the
features and units of both pipelines) or `... finetuned AUTO_CLASS TASK` (the head's outputs through its Auto class,
and the output of the transformers pipeline TASK, if any): it makes `spidr_hf` unimportable first, so everything must
come from the folder's remote code. It writes what it got for the probe to OUT.npz for the caller to compare with the
source model.

Its first act, before the slow imports, is to write its process id to `release-check.pid` beside OUT.npz: while the
check runs (up to minutes on a loaded machine), that file names the process to look at or stop, and it tells a
watcher that the check's interpreter is running (`push`'s tests kill `push` then and check that this process dies too).
"""

import importlib.abc
import importlib.machinery
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PID_FILE = "release-check.pid"


def write_pid_file(folder: Path) -> None:
    """`folder`/PID_FILE holding this process's id, complete whenever it exists (written aside, then renamed)."""
    partial = folder / f".{PID_FILE}.partial"
    partial.write_text(f"{os.getpid()}\n", encoding="utf-8")
    os.replace(partial, folder / PID_FILE)


class _HideSpidrHf(importlib.abc.MetaPathFinder):
    """Refuse to import `spidr_hf`, wherever it is installed (editable or not)."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name == "spidr_hf" or name.startswith("spidr_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden for the release check)", name=name)
        return None


def main(folder: str, probe_path: str, output_path: str, mode: str, *arguments: str) -> None:
    write_pid_file(Path(output_path).absolute().parent)
    sys.meta_path.insert(0, _HideSpidrHf())
    import numpy as np
    import torch
    import transformers
    from transformers import AutoFeatureExtractor, AutoModel, pipeline

    loaded = {
        "AutoModel": AutoModel.from_pretrained(folder, trust_remote_code=True),
        "AutoFeatureExtractor": AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True),
        "spidr-features": pipeline("spidr-features", model=folder, trust_remote_code=True, device="cpu"),
    }
    probe = np.load(probe_path)  # at the sampling rate of the folder's feature extractor
    rate = loaded["AutoFeatureExtractor"].sampling_rate
    results = {}
    if mode == "pretrained":
        layer = int(arguments[0])
        loaded["spidr-units"] = pipeline("spidr-units", model=folder, trust_remote_code=True, device="cpu")
        results["features"] = loaded["spidr-features"](probe, sampling_rate=rate, layer=layer)["features"]
        results["units"] = loaded["spidr-units"](probe, sampling_rate=rate, layer=layer)["units"]
    else:
        auto_class, task = arguments
        head = loaded[auto_class] = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True)
        inputs = loaded["AutoFeatureExtractor"](probe, sampling_rate=rate, return_tensors="pt")
        with torch.no_grad():
            output = head.eval()(**inputs)
        results["outputs"] = (output.embeddings if auto_class == "AutoModelForAudioXVector" else output.logits).numpy()
        if task:
            task_pipeline = pipeline(task, model=folder, trust_remote_code=True, device="cpu")
            loaded[task] = task_pipeline.model
            results["pipeline"] = np.array(json.dumps(task_pipeline({"raw": probe, "sampling_rate": rate})))
    for name, obj in loaded.items():
        if not type(obj).__module__.startswith("transformers_modules."):
            raise RuntimeError(f"{name} gave {type(obj).__module__}.{type(obj).__name__}, not the folder's code.")
    if any(name == "spidr_hf" or name.startswith("spidr_hf.") for name in sys.modules):
        raise RuntimeError("spidr_hf was imported during the release check.")
    np.savez(output_path, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
