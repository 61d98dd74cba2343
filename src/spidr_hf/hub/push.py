"""`spidr-hf push`: assemble, check and upload a model to the Hugging Face Hub."""

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, get_token
from huggingface_hub.errors import HFValidationError, HTTPError
from huggingface_hub.utils import validate_repo_id

from .convert import read_conversion_record
from .model_card import CardOptions
from .release import assemble_release


class PushError(ValueError):
    """The upload failed; the message says what reached the Hub."""


@contextmanager
def hub_step(description: str, consequence: str = "") -> Iterator[None]:
    """Turn Hub and network errors of one step into a `PushError` that names the step and what it left behind."""
    try:
        yield
    except (HTTPError, OSError) as error:  # Hub HTTP errors, network failures, offline mode
        raise PushError(f"{description} failed: {error}{consequence}") from error


def check_repo_id(repo_id: str) -> str:
    """Accept `ORG/NAME` repository ids only (a bare name would land in whatever account the token belongs to)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"Invalid --repo-id {repo_id!r}: {error}") from error
    if repo_id.count("/") != 1:
        raise ValueError(f"--repo-id must be ORG/NAME (or USER/NAME), got {repo_id!r}.")
    return repo_id


def hub_api() -> HfApi:
    """An API client with a working token from the usual places (HF_TOKEN, or the file `hf auth login` writes)."""
    token = get_token()
    if token is None:
        raise PushError("No Hugging Face token: run `hf auth login` or set HF_TOKEN to a token with write access.")
    api = HfApi(token=token)
    with hub_step("Checking the Hugging Face token", "; nothing was uploaded."):
        api.whoami()
    return api


def upload_release(
    api: HfApi,
    folder: Path,
    repo_id: str,
    private: bool,
    revision: str | None,
    create_pr: bool,
    repo_type: str = "model",
    what: str = "model",
) -> CommitInfo:
    """Create the repository (and branch) if needed and upload `folder` as one commit."""
    with hub_step(f"Creating the repository {repo_id}", "; nothing was uploaded."):
        # None leaves a new repository's visibility to the account's default
        api.create_repo(repo_id, private=private or None, exist_ok=True, repo_type=repo_type)
    if revision is not None:
        with hub_step(f"Creating the branch {revision} of {repo_id}", "; nothing was uploaded."):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=repo_type)
    # One commit: if it fails, the repository holds none of the files
    with hub_step(f"Uploading to {repo_id}", f"; nothing was committed to {repo_id}."):
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            create_pr=create_pr,
            repo_type=repo_type,
            commit_message=f"Upload SpidR {what} with spidr-hf",
        )


def check_hub_ids(option: str, ids: list[str]) -> None:
    """Hub ids for the card's metadata (`--train-dataset`, `--base-model`), checked before the work: the Hub refuses a
    card with an invalid one only at upload."""
    for hub_id in ids:
        try:
            validate_repo_id(hub_id)
        except HFValidationError as error:
            raise ValueError(f"Invalid {option} {hub_id!r}: {error}") from error


def push_model(
    model: str | os.PathLike,
    repo_id: str,
    *,
    official: str | None = None,
    license: str | None = None,
    train_datasets: Sequence[str] = (),
    base_model: str | None = None,
    evaluation: str | os.PathLike | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    dry_run: str | os.PathLike | None = None,
) -> str:
    """
    Assemble the release folder of the saved model `model` (pretrained or fine-tuned: weights, remote code, pipelines
    and the model card with `official`'s entry or `license`, the training datasets, the base model and the figures of
    a `spidr-hf evaluate` report), check it by loading it without spidr_hf, and upload it to `repo_id` in one commit;
    with `dry_run`, write it there and upload nothing. Returns the commit (or pull request) URL, or the folder.
    """
    repo_id = check_repo_id(repo_id)
    check_hub_ids("--train-dataset", list(train_datasets))
    check_hub_ids("--base-model", [base_model] if base_model else [])
    options = CardOptions(
        repo_id=repo_id,
        official=official,
        license=license,
        datasets=tuple(train_datasets),
        base_model=base_model,
        evaluation=Path(evaluation) if evaluation is not None else None,
        # A `spidr-hf convert` folder: the card names what was converted, with its SHA-256
        conversion=read_conversion_record(Path(model)) if Path(model).is_dir() else None,
    )
    if dry_run is not None:
        return str(assemble_release(Path(model), Path(dry_run), options))
    api = hub_api()  # before assembling, so that a missing token fails fast
    with tempfile.TemporaryDirectory(prefix="spidr-release-") as scratch:
        folder = assemble_release(Path(model), Path(scratch) / "release", options)
        commit = upload_release(api, folder, repo_id, private, revision, create_pr)
    return commit.pr_url if create_pr else commit.commit_url
