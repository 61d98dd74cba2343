"""
Where `spidr-hf convert` reads a checkpoint from, fetched to a local file with the reference's `config.json` found
beside it:

- a local file (`.pt` of the reference, fairseq `.ckpt` of the original DinoSR);
- one of the reference implementation's torch.hub names (`spidr_base`, `dinosr_base_reproduced`,
  `dinosr_base_original`), downloaded from its official URL;
- an `https://` (or `http://`) URL, `config.json` taken from the same URL folder;
- a Hugging Face Hub repository `ORG/NAME` (its one `.pt` / `.ckpt` file) or a file in one, `ORG/NAME/PATH`, through
  huggingface_hub (its cache, `--revision`, `HF_HUB_OFFLINE`, tokens), `config.json` taken from the same folder of
  the repository.

URL downloads are cached in ~/.cache/spidr-hf/downloads (or $XDG_CACHE_HOME/spidr-hf/downloads), one folder per URL.
"""

import hashlib
import os
import re
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import SpidrError

CHECKPOINT_SUFFIXES = (".pt", ".ckpt")
REFERENCE_CONFIG = "config.json"  # the run config the reference's training writes beside its checkpoints
# Missing files of a static file server: 404, or 403 from object stores that answer so for a key they lack (S3)
MISSING_STATUSES = (403, 404)
# The Hub's file URLs, which go through huggingface_hub (its cache and revisions) rather than a plain download
HUB_FILE_URL = re.compile(
    r"https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/(?:resolve|blob)/(?P<revision>[^/]+)/(?P<file>.+)"
)
HUB_SOURCE = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<file>.+))?")


class ConversionError(SpidrError):
    """The source is not a checkpoint `spidr-hf convert` can read or understand; nothing was written."""


@dataclass(frozen=True)
class ReferenceHubName:
    """A model of the reference's `hubconf.py`: the checkpoint its function downloads, and the model it builds."""

    url: str
    model_type: str  # the reference builds SpidR(SpidRConfig()) or DinoSR(DinoSRConfig(...)): the base configuration
    official: str  # the entry of hub/model_cards/official.toml that `spidr-hf push --official` renders


# `torch.hub.load("facebookresearch/spidr", NAME)`: the URLs of spidr/models/utils.py in spidr==0.2.0
REFERENCE_HUB_NAMES = {
    "spidr_base": ReferenceHubName(
        "https://dl.fbaipublicfiles.com/shared/devai/assets/models/spidr_base.pt", "spidr", "spidr-base"
    ),
    "dinosr_base_reproduced": ReferenceHubName(
        "https://dl.fbaipublicfiles.com/shared/devai/assets/models/dinosr_base_reproduced.pt",
        "dinosr",
        "dinosr-base-reproduced",
    ),
    "dinosr_base_original": ReferenceHubName(
        "https://data.csail.mit.edu/placesaudio/dinosr/dinosr.ckpt", "dinosr", "dinosr-original"
    ),
}


@dataclass(frozen=True)
class FetchedCheckpoint:
    """A checkpoint on the local disk, where it came from, and what the source says of its configuration."""

    path: Path
    origin: str  # recorded with the converted model: an absolute path, a URL, or hf://ORG/NAME@COMMIT/PATH
    config: Path | None = None  # the reference config.json found beside the checkpoint (or given), on the local disk
    config_origin: str | None = None
    # A reference hub name builds its model with the base configuration of its type, without a config.json
    model_type: str | None = None
    official: str | None = None

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)


def shown_origin(origin: str) -> str:
    """How a card names a source: URLs and Hub files in full, a local file by its name (its folder is the user's)."""
    return origin if "://" in origin else Path(origin).name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_checkpoint(
    source: str, revision: str | None = None, config: Path | None = None, progress: bool = True
) -> FetchedCheckpoint:
    """The checkpoint `source` names (see the module's docstring), downloaded if need be, with its reference config:
    `config` if given, else the `config.json` beside it if there is one."""
    local = Path(source).expanduser()
    # A reference hub name, or the URL its function downloads (which has no config.json beside it to tell the type)
    hub_name = REFERENCE_HUB_NAMES.get(source) or next(
        (entry for entry in REFERENCE_HUB_NAMES.values() if entry.url == source), None
    )
    hub_file = HUB_FILE_URL.fullmatch(source)
    if revision is not None and (local.exists() or hub_name is not None or (is_url(source) and not hub_file)):
        raise ConversionError(f"--revision applies to Hugging Face Hub repositories, not to {source}.")
    if local.exists():
        fetched = _local(local)
    elif hub_name is not None:
        path = download(hub_name.url, progress)
        # The reference's hub function builds the base model of its type: no config.json is read
        fetched = FetchedCheckpoint(path, hub_name.url, model_type=hub_name.model_type, official=hub_name.official)
    elif hub_file is not None:
        fetched = _from_hub(hub_file["repo"], hub_file["file"], revision or hub_file["revision"])
    elif is_url(source):
        fetched = _from_url(source, progress)
    elif (match := HUB_SOURCE.fullmatch(source)) and not source.startswith((".", "~")):
        fetched = _from_hub(match["repo"], match["file"], revision, local_candidate=local)
    else:
        raise ConversionError(f"{source} is not a file.")
    if config is not None:
        if not config.is_file():
            raise ConversionError(f"--config {config} is not a file.")
        fetched = FetchedCheckpoint(
            fetched.path, fetched.origin, config, str(config.resolve()), fetched.model_type, fetched.official
        )
    return fetched


def is_url(source: str) -> bool:
    return source.startswith(("https://", "http://"))


def _local(path: Path) -> FetchedCheckpoint:
    if not path.is_file():
        raise ConversionError(f"{path} is not a file.")
    beside = path.parent / REFERENCE_CONFIG
    config = beside if beside.is_file() else None
    return FetchedCheckpoint(path, str(path.resolve()), config, None if config is None else str(config.resolve()))


def cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spidr-hf" / "downloads"


def download(url: str, progress: bool = True) -> Path:
    """The file at `url`, downloaded once into the cache (a folder per URL, as file names repeat: step_200000.pt)."""
    from torch.hub import download_url_to_file

    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "download"
    path = cache_folder() / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # torch.hub's download, as the reference's hub functions use: into a temporary file renamed when complete
        download_url_to_file(url, str(path), progress=progress)
    except urllib.error.HTTPError as error:
        raise ConversionError(f"Could not download {url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise ConversionError(f"Could not download {url}: {reason}") from error
    return path


def _from_url(url: str, progress: bool) -> FetchedCheckpoint:
    path = download(url, progress)
    config_url = urllib.parse.urljoin(url, REFERENCE_CONFIG)
    try:
        config = download(config_url, progress=False)
    except ConversionError as error:
        cause = error.__cause__
        if not (isinstance(cause, urllib.error.HTTPError) and cause.code in MISSING_STATUSES):
            raise
        return FetchedCheckpoint(path, url)
    return FetchedCheckpoint(path, url, config, config_url)


def _from_hub(
    repo_id: str, filename: str | None, revision: str | None, local_candidate: Path | None = None
) -> FetchedCheckpoint:
    """A checkpoint of a Hub repository, through huggingface_hub's cache; `config.json` from the same folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"Hugging Face Hub repository {repo_id}" + (f" (revision {revision})" if revision else "")
    not_local = f"{local_candidate} is not a file, and " if local_candidate is not None else ""
    try:
        filename = filename or _hub_checkpoint_name(repo_id, revision)
        path = Path(hf_hub_download(repo_id, filename, revision=revision))
    except RepositoryNotFoundError as error:
        private = "or it is private: log in with `hf auth login`"
        raise ConversionError(f"{not_local}there is no {where} ({private}).") from error
    except RevisionNotFoundError as error:
        raise ConversionError(f"The {where} has no revision {revision}.") from error
    except LocalEntryNotFoundError as error:
        raise ConversionError(
            f"{not_local}{filename or 'the checkpoint'} of the {where} is not in the Hugging Face cache, and the Hub "
            "cannot be reached (HF_HUB_OFFLINE is set, or no network): run it once online."
        ) from error
    except EntryNotFoundError as error:
        raise ConversionError(f"The {where} has no file {filename}.") from error
    except (HFValidationError, OfflineModeIsEnabled, OSError) as error:
        raise ConversionError(f"{not_local}could not read the {where}: {error}") from error
    commit = _snapshot_commit(path)
    origin = f"hf://{repo_id}@{commit}/{filename}"
    config_name = str(PurePosixPath(filename).parent / REFERENCE_CONFIG).removeprefix("./")
    config = _hub_config(repo_id, config_name, commit)
    config_origin = None if config is None else f"hf://{repo_id}@{commit}/{config_name}"
    return FetchedCheckpoint(path, origin, config, config_origin)


def _hub_checkpoint_name(repo_id: str, revision: str | None) -> str:
    """The one checkpoint file of a repository (its files listed online, those of its cached snapshot offline)."""
    from huggingface_hub import HfApi, is_offline_mode, snapshot_download

    if is_offline_mode():
        snapshot = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        files = [path.relative_to(snapshot).as_posix() for path in snapshot.rglob("*") if path.is_file()]
    else:
        files = HfApi().list_repo_files(repo_id, revision=revision)
    checkpoints = sorted(name for name in files if name.endswith(CHECKPOINT_SUFFIXES))
    if len(checkpoints) == 1:
        return checkpoints[0]
    if not checkpoints:
        if "model.safetensors" in files or "pytorch_model.bin" in files:
            raise ConversionError(
                f"{repo_id} holds no reference checkpoint (.pt, .ckpt) but Transformers weights: load it with "
                "from_pretrained, there is nothing to convert."
            )
        raise ConversionError(f"{repo_id} holds no checkpoint (.pt, .ckpt); its files: {sorted(files)[:20]}.")
    raise ConversionError(
        f"{repo_id} holds several checkpoints: {checkpoints[:20]}; name one, e.g. `spidr-hf convert "
        f"{repo_id}/{checkpoints[-1]} DESTINATION`."
    )


def _snapshot_commit(path: Path) -> str:
    """The commit of a file in huggingface_hub's cache layout (`.../snapshots/COMMIT/FILE`)."""
    parts = path.parts
    if "snapshots" in parts:
        return parts[len(parts) - 1 - parts[::-1].index("snapshots") + 1]
    return "unknown"


def _hub_config(repo_id: str, filename: str, commit: str) -> Path | None:
    """The reference config.json of a repository folder: None if the repository has none (known to the cache
    offline), an error if it is unknown offline (rather than converting with a guessed configuration)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, revision=commit))
    except LocalEntryNotFoundError as error:
        if try_to_load_from_cache(repo_id, filename, revision=commit) is not None:  # known to be missing
            return None
        raise ConversionError(
            f"Whether {repo_id} has a {filename} is not in the Hugging Face cache and the Hub cannot be reached: run "
            "it once online, or give the run's config with --config."
        ) from error
    except EntryNotFoundError:
        return None
