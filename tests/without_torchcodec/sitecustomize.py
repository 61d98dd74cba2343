"""
Imported at interpreter start-up when this folder is on PYTHONPATH: hides torchcodec and datasets, as the lent GPU
machines' image lacks them (docs/speed.md, "The GPU suite"), so that a test runs a program as it would run there;
SPIDR_HF_HIDDEN_PACKAGES (comma-separated) names others to hide too. Python's import system and `importlib.metadata`
both ask the finders of `sys.meta_path`: each is wrapped so that it finds neither the modules nor their distributions,
and `import torchcodec` fails as for a package never installed (`importlib.util.find_spec` gives None, as
transformers' availability checks expect).
"""

import os
import sys

HIDDEN = ("torchcodec", "datasets", *filter(None, os.environ.get("SPIDR_HF_HIDDEN_PACKAGES", "").split(",")))


def _hidden(name: str | None) -> bool:
    return name is not None and name.split(".")[0].replace("-", "_").lower() in HIDDEN


class _Hiding:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if _hidden(name) or not hasattr(self._finder, "find_spec"):
            return None
        return self._finder.find_spec(name, path, target)

    def find_distributions(self, context=None, **kwargs):
        if not hasattr(self._finder, "find_distributions"):
            return iter(())
        if context is None:
            from importlib.metadata import DistributionFinder

            context = DistributionFinder.Context(**kwargs)
        return (dist for dist in self._finder.find_distributions(context) if not _hidden(dist.metadata["Name"]))

    def __getattr__(self, name):
        return getattr(self._finder, name)


sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
