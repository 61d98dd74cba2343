"""
What each `spidr-hf` sub-command does with its parsed arguments: it calls the library function that does the job,
with typed arguments, and prints the outcome. `spidr_hf` is imported inside each function, when the sub-command runs
(its import loads torch and transformers: parsing and `--help` must not wait for it).
"""

import argparse


def convert(args: argparse.Namespace) -> int:
    from spidr_hf.hub.convert import convert as convert_checkpoint
    from spidr_hf.hub.convert import describe_conversion

    path = convert_checkpoint(args.source, args.destination, args.model_type, args.revision, args.config, progress=True)
    print(describe_conversion(path))
    return 0


def uploaded(args: argparse.Namespace, where: str) -> str:
    """What an upload command (push, push-units) did: the folder of a dry run, or the commit or pull request."""
    return (
        f"Wrote and checked {where}; dry run, nothing uploaded."
        if args.dry_run
        else f"Uploaded {args.repo_id}: {where}"
    )


def push(args: argparse.Namespace) -> int:
    from spidr_hf.hub.push import push_model

    where = push_model(
        args.model,
        args.repo_id,
        official=args.official,
        license=args.license,
        train_datasets=args.train_dataset,
        base_model=args.base_model,
        evaluation=args.evaluation,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        dry_run=args.dry_run,
    )
    print(uploaded(args, where))
    return 0


def push_units(args: argparse.Namespace) -> int:
    from spidr_hf.hub.push_units import push_units as push_units_folder

    where = push_units_folder(
        args.output,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        dry_run=args.dry_run,
    )
    print(uploaded(args, where))
    return 0


def corpus(args: argparse.Namespace) -> int:
    import time

    from spidr_hf.data.corpus import build_corpus, describe_corpus

    start = time.perf_counter()
    built = build_corpus(args.out_dir, args.hours, args.speakers, args.dev_speakers, args.seed, args.num_workers)
    seconds = time.perf_counter() - start
    print(f"{describe_corpus(built, args.out_dir)}; {seconds:.0f} s. Load it with datasets.load_from_disk.")
    return 0


def extract(args: argparse.Namespace) -> int:
    from spidr_hf.units.extract import extract as extract_files

    extract_files(
        args.model,
        args.input,
        args.output,
        layer=args.layer,
        hidden_states=args.hidden_states,
        features=args.features or args.units is None,
        units=args.units,
        units_file=args.units_file,
        units_format=args.units_format,
        deduplicate=args.deduplicate,
        batch_seconds=args.batch_seconds,
        device=args.device,
        dtype=args.dtype,
        shard=args.shard,
        num_workers=args.num_workers,
        compile=args.compile,
        chunk_seconds=args.chunk_seconds,
    )
    return 0


def kmeans(args: argparse.Namespace) -> int:
    from spidr_hf.units.stored_kmeans import fit_model_kmeans

    fitted = fit_model_kmeans(
        args.model,
        dataset=args.dataset,
        audio=args.audio,
        split=args.split,
        layer=args.layer,
        num_clusters=args.num_clusters,
        kmeans_frames=args.kmeans_frames,
        memory_frames=args.kmeans_memory_frames,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        output=args.output,
    )
    if fitted is not None:  # None: another process of a launched job writes them
        print(f"Wrote {args.num_clusters} k-means centroids of layer {fitted.layer} into {fitted.folder}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from spidr_hf.evaluation import evaluate_model
    from spidr_hf.evaluation.report import RESULTS_FILE, format_comparison, format_table

    report = evaluate_model(
        args.model,
        args.dataset,
        item_file=args.item,
        audio_dir=args.audio,
        alignments=args.alignments,
        kmeans_audio_dir=args.kmeans_audio,
        layers=args.layers,
        units=args.units,
        num_clusters=args.num_clusters,
        kmeans_frames=args.kmeans_frames,
        batch_size=args.batch_size,
        max_utterances=args.max_utterances,
        max_size_group=args.max_size_group,
        max_x_across=args.max_x_across,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        refit_kmeans=args.refit_kmeans,
        output_dir=args.output,
        overwrite=args.overwrite,
    )
    print(format_table(report))
    if any(result.system == "random_init" for result in report.results):
        print(format_comparison(report))
    print(f"Wrote {args.output / RESULTS_FILE} and plots")
    return 0


def slm_benchmark(args: argparse.Namespace) -> int:
    from spidr_hf.slm.benchmark import build_benchmark

    folder = build_benchmark(
        args.output, args.words, args.sentences, args.voices, args.seed, args.num_workers, num_stories=args.stories
    )
    stories = " and sSC/ and tSC/ (story cloze, slamkit's layout)" if args.stories else ""
    print(f"Wrote the benchmark to {folder}: lexical/dev and syntactic/dev (sLM21 layout){stories}")
    return 0


def slm_score(args: argparse.Namespace) -> int:
    from spidr_hf.slm.score import SCORES_FILE, format_scores, score_benchmark

    results = score_benchmark(
        args.ulm,
        args.units_model,
        args.data,
        args.output,
        mean_per_unit=args.mean_per_unit,
        device=args.device,
        units_dtype=args.units_dtype,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        units=args.units,
        ssc=args.ssc,
        tsc=args.tsc,
        true_column=args.true_column,
        false_column=args.false_column,
        split=args.split,
        seed=args.seed,
    )
    print(format_scores(results))
    submission = f"; submission folder: {args.output / 'submission'}" if args.data is not None else ""
    print(f"Scores: {args.output / SCORES_FILE}{submission}")
    return 0
