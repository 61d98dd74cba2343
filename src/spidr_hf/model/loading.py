"""
Loading a SpidR/DinoSR model for a command or a training run: one `load` for a local folder or a Hub id, the student
network or the full pretraining model, in a dtype, with its feature extractor (the default one when the folder has
none) and one-line errors.
"""

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from transformers import AutoConfig
from transformers.utils import CONFIG_NAME, FEATURE_EXTRACTOR_NAME

from ..defaults import DTYPE_NAMES
from ..errors import ModelLoadError, SpidrError
from .configuration_spidr import SpidrConfig
from .feature_extraction_spidr import SpidrFeatureExtractor
from .modeling_spidr import HEAD_CLASSES, SpidrForCTC, SpidrForPreTraining, SpidrHeadModel, SpidrModel

logger = logging.getLogger(__name__)

# dtypes a model may run in; whatever the dtype, features are compared and saved in float32
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
# What to load: the student network (`AutoModel`), the full pretraining model (`AutoModelForPreTraining`: heads,
# teacher, codebooks), or the folder's own kind (the full model, or the student of a folder saved without heads)
Part = Literal["student", "full", "as_saved"]


@dataclass(frozen=True)
class LoadedModel:
    model: SpidrModel | SpidrForPreTraining
    feature_extractor: SpidrFeatureExtractor
    has_heads: bool  # the folder holds trained codebook heads (False for a student-only folder)

    @property
    def student(self) -> SpidrModel:
        return self.model.base_model

    @property
    def config(self) -> SpidrConfig:
        return self.model.config


def load(
    source: str | os.PathLike,
    part: Part = "as_saved",
    *,
    dtype: str = "float32",
    device: str | None = None,
    require_heads: bool = False,
    without_kmeans: bool = False,
) -> LoadedModel:
    """
    Load the model of a folder or Hub id, in `dtype` (a key of `DTYPES`); on `device` (checked, see `check_device`)
    and in eval mode when given. `require_heads`: a folder without trained codebook heads is an error.
    `without_kmeans`: leave out the k-means centroids the folder may store (`spidr-hf kmeans` replaces them, also
    those of a folder left out of step with its config).
    """
    if dtype not in DTYPES:
        raise SpidrError(f"Unknown dtype {dtype!r}: choose among {list(DTYPES)}")
    if device is not None:
        device = check_device(device)
    local_files_only = load_config(source).local_files_only
    missing = []
    with loading_errors(source):
        feature_extractor = load_feature_extractor(source, local_files_only)
        options = {"dtype": DTYPES[dtype], "local_files_only": local_files_only}
        if without_kmeans:
            options |= {"kmeans_layer": None, "kmeans_num_clusters": 0, "kmeans_centroids_sha256": None}
        if part == "student":
            model = SpidrModel.from_pretrained(source, **options)
        else:
            model, info = SpidrForPreTraining.from_pretrained(source, output_loading_info=True, **options)
            missing = sorted(info["missing_keys"])
    has_heads = part != "student" and not any(key.startswith("heads.") for key in missing)
    if require_heads and missing:
        raise ModelLoadError(
            f"{source} lacks {len(missing)} weights of the full model (e.g. {missing[:3]}): use a folder saved "
            "from SpidrForPreTraining (`spidr-hf convert` or a training run), which has the codebook heads."
        )
    if part == "as_saved" and any(key.startswith(("heads.", "teacher.")) for key in missing):
        model = model.spidr  # a student-only folder: its weights are the pretraining model's student
    if model.base_model.kmeans is not None:
        try:  # checked now, not at the first units: kmeans, evaluate and extract fail before any work
            model.base_model.kmeans.check_fitted()
        except ValueError as error:
            raise ModelLoadError(f"{source}: {error}") from None
    if device is not None:
        model = model.to(device).eval()
    return LoadedModel(model, feature_extractor, has_heads)


@contextmanager
def loading_errors(source: str | os.PathLike) -> Iterator[None]:
    """What loading a model's files can raise because of the files, as one-line `ModelLoadError`s: missing, unreadable
    or truncated files, and a config whose sizes do not match the weights."""
    try:
        yield
    except (OSError, ValueError, SafetensorError) as error:
        raise ModelLoadError(f"Cannot load the model {source}: {' '.join(str(error).split())}") from error
    except RuntimeError as error:
        if "size mismatch" not in str(error) and "ignore_mismatched_sizes" not in str(error):
            raise
        raise ModelLoadError(
            f"Cannot load the model {source}: its config.json does not match its weights' sizes ({_first_line(error)})"
        ) from error


@dataclass(frozen=True)
class LoadedConfig:
    config: SpidrConfig
    local_files_only: bool  # whether the model comes from the local Hub cache (offline, or the Hub unreachable)


def load_config(source: str | os.PathLike) -> LoadedConfig:
    """The config of a folder or Hub id, read before its weights: a command checks its options against it first."""
    if Path(source).is_dir() and not Path(source, CONFIG_NAME).is_file():
        raise ModelLoadError(f"Cannot load the model {source}: it is not a saved model folder (no {CONFIG_NAME})")
    try:
        local_files_only = _use_local_files_only(source)
        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Cannot load the model {source}: {' '.join(str(error).split())}") from error
    if not isinstance(config, SpidrConfig):
        raise ModelLoadError(
            f"Cannot load the model {source}: it is a {type(config).__name__}, not a SpidR/DinoSR model"
        )
    check_fits_in_memory(source, config)
    return LoadedConfig(config, local_files_only)


def estimated_parameters(config: SpidrConfig) -> int:
    """About how many weights the full pretraining model of `config` has (student, teacher, heads, codebooks,
    k-means centroids): the large matrices, from the sizes alone (SpidR base: 185M, of 93M for the student)."""
    hidden, channels = config.hidden_size, [1, *config.conv_dim]
    convolutions = sum(channels[k] * channels[k + 1] * config.conv_kernel[k] for k in range(len(config.conv_dim)))
    layer = 4 * hidden * hidden + 2 * hidden * config.intermediate_size  # attention, feed-forward
    positional = config.conv_pos_depth * hidden * (hidden // config.num_conv_pos_embedding_groups)
    encoder = config.num_hidden_layers * layer + positional * config.pos_conv_kernel_size
    codebooks = 2 * config.num_codebooks * config.codebook_size * hidden  # heads and codewords
    kmeans = config.kmeans_num_clusters * hidden
    return convolutions + config.conv_dim[-1] * hidden + 2 * encoder + codebooks + kmeans


def check_fits_in_memory(source: str | os.PathLike, config: SpidrConfig) -> None:
    """Refuse, before building it, a config whose weights alone outgrow this machine's memory (a typo in a size would
    otherwise fill the memory for minutes)."""
    if not hasattr(os, "sysconf") or "SC_PHYS_PAGES" not in os.sysconf_names:
        return
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    needed = 4 * estimated_parameters(config)  # float32
    if needed > memory:
        sizes = ", ".join(
            f"{name} {getattr(config, name)}"
            for name in (
                "num_hidden_layers",
                "hidden_size",
                "intermediate_size",
                "codebook_size",
                "kmeans_num_clusters",
            )
        )
        raise ModelLoadError(
            f"Cannot load the model {source}: its config describes about {needed / 4:.3g} weights "
            f"({needed / 2**30:.3g} GiB in float32), more than this machine's {memory / 2**30:.3g} GiB of memory; "
            f"check its sizes ({sizes})"
        )


@dataclass(frozen=True)
class LoadedFinetuned:
    model: SpidrHeadModel
    feature_extractor: SpidrFeatureExtractor
    tokenizer: object | None  # the CTC tokenizer (None for classifiers)


def finetuned_head(config: SpidrConfig) -> type[SpidrHeadModel] | None:
    """The head class a fine-tuned folder was saved from (None for a pretrained or student-only folder)."""
    names = [name for name in (config.architectures or []) if name in HEAD_CLASSES]
    return HEAD_CLASSES[names[0]] if names else None


def load_finetuned(source: str | os.PathLike) -> LoadedFinetuned:
    """A fine-tuned folder's model (the head class it was saved from), feature extractor and, for CTC, tokenizer."""
    from transformers import AutoTokenizer

    loaded_config = load_config(source)
    head = finetuned_head(loaded_config.config)
    if head is None:
        raise ModelLoadError(
            f"{source} is not a fine-tuned SpidR folder (its architectures: {loaded_config.config.architectures})"
        )
    options = {"local_files_only": loaded_config.local_files_only}
    with loading_errors(source):  # also a CTC folder without its tokenizer
        feature_extractor = load_feature_extractor(source, loaded_config.local_files_only)
        model = head.from_pretrained(source, **options).eval()
        tokenizer = AutoTokenizer.from_pretrained(source, **options) if head is SpidrForCTC else None
    return LoadedFinetuned(model, feature_extractor, tokenizer)


def in_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`model` cast to `dtype` as `from_pretrained(dtype=...)` loads it: the modules it keeps in fp32 stay so."""
    model.to(dtype)
    keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    for name, module in model.named_modules():  # the teacher, the codebooks, the student's k-means centroids
        if name.split(".")[-1] in keep:
            module.float()
    return model


def weights_hash(module: torch.nn.Module) -> str:
    """
    SHA-256 of a module's weights (names, dtypes, shapes and values, in name order): what an output's records name to
    say which weights made it, the same whatever folder or Hub revision they were loaded from.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_device(device: str | None) -> str:
    """`device`, or cuda when available else cpu; one line if torch does not know it or this machine lacks it."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise SpidrError(f"Unknown device {device!r}: use e.g. cpu, cuda or cuda:1") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise SpidrError(f"Device {device!r}: CUDA is not available on this machine; use cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise SpidrError(f"Device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise SpidrError(f"Device {device!r}: MPS is not available on this machine; use cpu")
    return device


def _use_local_files_only(name: str | os.PathLike) -> bool:
    """
    Whether `name` must be loaded from the local cache; fails in one line, and fast, when it is neither a folder nor a
    model the Hub has or the cache holds (transformers would retry an unreachable Hub for about 50 s first).
    """
    from huggingface_hub import is_offline_mode, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    if Path(name).is_dir():
        return False
    if Path(name).exists():
        raise ValueError("it is a file; pass a model folder or a Hub model id")
    try:
        validate_repo_id(str(name))
    except HFValidationError as error:
        raise ValueError("it is neither a model folder nor a Hub model id") from error
    is_cached = isinstance(try_to_load_from_cache(str(name), "config.json"), str)
    if is_offline_mode():
        if not is_cached:
            raise ValueError("it is not a model folder, and offline (HF_HUB_OFFLINE) there is no cached copy of it")
        return True
    try:
        model_info(str(name), timeout=10)
    except GatedRepoError:  # it exists: loading tells how to get access
        return False
    except RepositoryNotFoundError as error:
        raise ValueError("it is neither a model folder nor a model on the Hub that you can access") from error
    except Exception as error:  # the Hub cannot be reached: DNS, proxy, timeout, server error
        if is_cached:
            logger.warning("The Hub cannot be reached (%s); using the cached copy of %s", error, name)
            return True
        raise ValueError(
            f"it is not a model folder and the Hub cannot be reached to download it ({type(error).__name__}: "
            f"{error}); check the name and the connection"
        ) from error
    return False


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def load_feature_extractor(name: str | os.PathLike, local_files_only: bool) -> SpidrFeatureExtractor:
    """The folder's feature extractor, or the default one if it has none (it has no learned state)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return SpidrFeatureExtractor.from_pretrained(name, local_files_only=local_files_only)
    except OSError:
        if Path(name).is_dir():
            has_file = Path(name, FEATURE_EXTRACTOR_NAME).is_file()
        else:
            has_file = isinstance(try_to_load_from_cache(str(name), FEATURE_EXTRACTOR_NAME), str)
        if has_file:  # present but unreadable: say so
            raise
        logger.warning("%s has no %s; using the default SpidrFeatureExtractor", name, FEATURE_EXTRACTOR_NAME)
        return SpidrFeatureExtractor()
