"""`spidr-hf push`: assemble, check and upload a model to the Hugging Face Hub."""

import argparse
import tempfile
from collections.abc import Iterator
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


def run(args: argparse.Namespace) -> int:
    repo_id = check_repo_id(args.repo_id)
    check_hub_ids("--train-dataset", args.train_dataset)
    check_hub_ids("--base-model", [args.base_model] if args.base_model else [])
    options = CardOptions(
        repo_id=repo_id,
        official=args.official,
        license=args.license,
        datasets=tuple(args.train_dataset),
        base_model=args.base_model,
        evaluation=args.evaluation,
        # A `spidr-hf convert` folder: the card names what was converted, with its SHA-256
        conversion=read_conversion_record(Path(args.model)) if Path(args.model).is_dir() else None,
    )
    if args.dry_run is not None:
        folder = assemble_release(Path(args.model), args.dry_run, options)
        print(f"Wrote and checked {folder}; dry run, nothing uploaded.")
        return 0
    api = hub_api()  # before assembling, so that a missing token fails fast
    with tempfile.TemporaryDirectory(prefix="spidr-release-") as scratch:
        folder = assemble_release(Path(args.model), Path(scratch) / "release", options)
        commit = upload_release(api, folder, repo_id, args.private, args.revision, args.create_pr)
    print(f"Uploaded {repo_id}: {commit.pr_url if args.create_pr else commit.commit_url}")
    return 0
