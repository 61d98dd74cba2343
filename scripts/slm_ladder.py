"""
The spoken-LM ladder on CPU, one resumable command (`scripts/ladder.sh` runs this): a flite corpus, a SpidR
pretrained on it (or one given), and for each unit source a unit LM trained on the corpus' units and scored on
sWUGGY-, sBLIMP-, sSC- and tSC-like pairs with 95 % intervals, beside the ABX and PNMI of the same units.

    scripts/ladder.sh [--hours 10.5] [--work runs/ladder] [--model FOLDER] [--tiny]

Stages, each skipped when its output is complete (a rerun goes on where a run stopped; a stage cut short resumes
inside when its tool does: the corpus, pretraining, the unit pass and the unit LMs do); their times, with the load
average at their end, accumulate in WORK/stages.json:

1. corpus: `spidr-hf corpus WORK/corpus --hours H` (all its splits are the LMs' training speech)
2. benchmark: `spidr-hf slm-benchmark WORK/benchmark` (words, sentences, sSC- and tSC-like stories)
3. pretrain: training/train.py training/configs/ladder_cpu.yaml on the corpus (skipped with --model)
4. kmeans: `spidr-hf kmeans` of layers 2, 4 and 6, and the model's random initialisation
5. units: SpidR's six sources from one forward pass of the model (`spidr_hf.units.joint`), the random
   initialisation's from one of its own, log-mel k-means, gold phones, and the phones of the sentence pool's text
6. ulm: training/train_ulm.py training/configs/ulm_ladder.yaml on each source's corpus units
7. score: `spidr-hf slm-score` of each unit LM on the benchmark's units of its source
8. quality: ABX and PNMI of each source's units on the corpus' dev split
9. summary: WORK/summary.md, summary.json, ladder.png, correlation.png
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {
    "phones": "gold phones (topline)",
    "text_phones": "phones of the text",
    "log_mel": "log-mel k-means",
    "codebook_l4": "codebook L4",
    "codebook_l5": "codebook L5",
    "codebook_l6": "codebook L6",
    "kmeans_l2": "k-means L2",
    "kmeans_l4": "k-means L4",
    "kmeans_l6": "k-means L6",
    "random_init": "random init (codebook L6)",
}
SPIDR_SOURCES = {  # name -> (unit kind, layer) of the pretrained model
    "codebook_l4": ("codebook", 4),
    "codebook_l5": ("codebook", 5),
    "codebook_l6": ("codebook", 6),
    "kmeans_l2": ("kmeans", 2),
    "kmeans_l4": ("kmeans", 4),
    "kmeans_l6": ("kmeans", 6),
}
KMEANS_LAYERS = (2, 4, 6)
# The scale of a full run and of --tiny (CI: minutes on two cores)
FULL = {
    "words": 1000, "sentences": 1000, "stories": 300, "voices": 2, "pretrain_steps": 800, "ulm_steps": 2400,
    "clusters": 64, "kmeans_frames": 30000, "abx_utterances": 400, "text_sentences": None,
}  # fmt: skip
FULL_HOURS, TINY_HOURS = 10.5, 0.03
TINY = {
    "words": 6, "sentences": 6, "stories": 4, "voices": 1, "pretrain_steps": 2, "ulm_steps": 3,
    "clusters": 8, "kmeans_frames": 1000, "abx_utterances": 6, "text_sentences": 40,
}  # fmt: skip


def main() -> None:
    from spidr_hf_cli.arguments import non_negative_int, positive_float, positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--hours",
        type=positive_float,
        help=f"hours of speech in the corpus (default: {FULL_HOURS}, --tiny: {TINY_HOURS})",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "runs/ladder", help="output folder (default: runs/ladder)")
    parser.add_argument("--model", type=Path, help="a pretrained SpidR to reuse instead of pretraining one")
    parser.add_argument("--tiny", action="store_true", help="a tiny ladder for CI: a few items, steps and frames")
    for name, value in FULL.items():
        kind = non_negative_int if name == "stories" else positive_int  # 0 stories: no story cloze
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=f"(default: {value})")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--encode-group", choices=("model", "random_init"), help=argparse.SUPPRESS)
    cores = os.cpu_count() or 1
    parser.add_argument("--threads", type=positive_int, default=cores, help=f"threads of one step (default: {cores})")
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=cores,
        help=f"unit LMs trained and scored at once, one thread each (default: {cores})",
    )
    args = parser.parse_args()
    # Checked before the first stage, which takes minutes: a later failure would leave a half-made WORK
    if args.work.exists() and not args.work.is_dir():
        parser.error(f"--work {args.work} is a file: give a new folder, or the folder of a run to resume")
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} has no config.json: give a saved SpidR folder, or leave --model out")
    scale = TINY if args.tiny else FULL
    settings = {name: getattr(args, name) if getattr(args, name) is not None else scale[name] for name in FULL}
    hours = args.hours if args.hours is not None else TINY_HOURS if args.tiny else FULL_HOURS
    ladder = Ladder(args.work.resolve(), hours, args.model, settings, args.seed, args.tiny)
    ladder.threads, ladder.jobs = args.threads, args.jobs
    if args.encode_group is not None:  # one step of the units stage, in a process of its own
        ladder.encode_group(args.encode_group)
        return
    ladder.run()


class Ladder:
    def __init__(self, work: Path, hours: float, model: Path | None, settings: dict, seed: int, tiny: bool) -> None:
        self.work, self.hours, self.settings, self.seed, self.tiny = work, hours, settings, seed, tiny
        self.corpus, self.benchmark = work / "corpus", work / "benchmark"
        self.model = model.resolve() if model is not None else work / "model"
        self.sources = work / "sources"
        self.times_path = work / "stages.json"
        self.threads = self.jobs = os.cpu_count() or 1

    def run(self) -> None:
        import torch

        torch.set_num_threads(self.threads)  # the steps run here: the units, their quality
        self.work.mkdir(parents=True, exist_ok=True)
        stages = [self.corpus_stage, self.benchmark_stage, self.pretrain_stage, self.kmeans_stage, self.units_stage]
        for stage in [*stages, self.ulm_stage, self.score_stage, self.quality_stage]:
            name = stage.__name__.removesuffix("_stage")
            print(f"== {name}", flush=True)
            start = time.perf_counter()
            did_work = stage()
            if did_work:
                self.record(name, time.perf_counter() - start)
        from spidr_hf.slm.ladder import summarize

        print("== summary", flush=True)
        times = {name: value["seconds"] for name, value in self.times().items()}
        loads = ", ".join(f"{name} {value['load_average'][0]:.1f}" for name, value in self.times().items())
        notes = [f"Corpus: {corpus_hours(self.corpus):.2f} h of speech (all of it the unit LMs' training speech)"]
        notes.append(f"Load average (1 min) at each stage's end, on {os.cpu_count()} cores: {loads}")
        summarize(self.work, SOURCES, times, self.seed, notes=notes)
        print((self.work / "summary.md").read_text())

    # -- bookkeeping
    def times(self) -> dict:
        return json.loads(self.times_path.read_text()) if self.times_path.is_file() else {}

    def record(self, stage: str, seconds: float) -> None:
        """Add a stage's time (a stage resumed over several runs sums them), with the load average at its end."""
        times = self.times()
        entry = times.get(stage, {"seconds": 0.0, "runs": 0})
        entry = {"seconds": entry["seconds"] + seconds, "runs": entry["runs"] + 1, "load_average": os.getloadavg()}
        times[stage] = entry
        self.times_path.write_text(json.dumps(times, indent=2) + "\n")
        print(f"   {stage}: {seconds / 60:.1f} min (load average {os.getloadavg()[0]:.1f})", flush=True)

    def environment(self, threads: int) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def run_command(self, command: list[str], log: Path | None = None) -> None:
        """A step of the ladder, on `--threads` threads; its output into `log` when given (its end shown if it
        fails)."""
        self.run_parallel([(command, log)], jobs=1, threads=self.threads)

    def run_parallel(self, commands: list[tuple[list, Path | None]], jobs: int, threads: int = 1) -> None:
        """Independent steps, `jobs` at a time, each on `threads` threads: on a CPU that others load, processes of
        one thread each lose far less to waiting on each other's threads than one process of several (a unit LM's
        step took 0.43 s on one thread, 1.65 s on two, under a load average of 7 on 2 cores)."""
        running: list[tuple[subprocess.Popen, list, Path | None, object]] = []
        pending = list(commands)
        while pending or running:
            while pending and len(running) < jobs:
                command, log = pending.pop(0)
                command = [str(part) for part in command]
                print("   $ " + " ".join(command), flush=True)
                output = None
                if log is not None:
                    log.parent.mkdir(parents=True, exist_ok=True)
                    output = open(log, "w")  # noqa: SIM115 (closed when the process ends)
                errors = subprocess.STDOUT if output else None
                process = subprocess.Popen(command, stdout=output, stderr=errors, env=self.environment(threads))
                running.append((process, command, log, output))
            time.sleep(0.5)
            for entry in list(running):
                process, command, log, output = entry
                if process.poll() is None:
                    continue
                running.remove(entry)
                if output is not None:
                    output.close()
                if process.returncode != 0:
                    for other, *_ in running:
                        other.terminate()
                    if log is not None:
                        print(log.read_text()[-3000:])
                    step = command[3] if command[1:3] == ["-m", "spidr_hf"] else Path(command[1]).name  # the tool
                    raise SystemExit(f"{step} failed ({process.returncode})" + (f": see {log}" if log else ""))

    def spidr_hf(self, *arguments) -> None:
        self.run_command([sys.executable, "-m", "spidr_hf", *arguments])

    # -- stages: each returns whether it did any work
    def corpus_stage(self) -> bool:
        if (self.corpus / "dev.item").is_file() and (self.corpus / "dataset_dict.json").is_file():
            return False
        self.spidr_hf("corpus", self.corpus, "--hours", self.hours, "--seed", self.seed)
        return True

    def benchmark_stage(self) -> bool:
        if self.benchmark.is_dir():
            return False
        counts = [f"--{name}={self.settings[name]}" for name in ("words", "sentences", "stories", "voices")]
        self.spidr_hf("slm-benchmark", self.benchmark, *counts, "--seed", self.seed)
        return True

    def pretrain_stage(self) -> bool:
        if (self.model / "config.json").is_file():
            return False
        script, config = ROOT / "training/train.py", ROOT / "training/configs/ladder_cpu.yaml"
        command = [sys.executable, str(script), str(config), f"--dataset={self.corpus}", f"--output_dir={self.model}"]
        command.append(f"--max_steps={self.settings['pretrain_steps']}")
        if not bf16_cpu():
            command.append("--bf16=false")  # 10x slower steps under bf16 autocast without bf16 instructions
        if self.tiny:  # a few steps: no evaluation, codebooks from one batch, the schedule within the steps
            command += ["--eval_strategy=no", "--codebook_init_batches=1", "--warmup_steps=1", "--lr_hold_steps=0"]
            command += ["--lr_decay_steps=1", "--save_steps=1000"]
        self.run_command(command, self.work / "logs/pretrain.log")
        return True

    def kmeans_stage(self) -> bool:
        commands = []
        for layer in KMEANS_LAYERS:
            folder = self.work / "models" / f"kmeans_l{layer}"
            if not (folder / "config.json").is_file():
                fit = [
                    f"--num-clusters={self.settings['clusters']}",
                    f"--kmeans-frames={self.settings['kmeans_frames']}",
                ]
                where = ["--dataset", self.corpus, "--output", folder, "--device", "cpu"]
                kmeans = [sys.executable, "-m", "spidr_hf", "kmeans", self.model, "--layer", layer, *fit, *where]
                commands.append((kmeans, self.work / "logs" / f"kmeans-l{layer}.log"))
        # The layers' fits at once, a thread each: each process spends seconds starting up (see `run_parallel`)
        self.run_parallel(commands, self.jobs)
        did_work = bool(commands)
        random_init = self.work / "models" / "random_init"
        if not (random_init / "config.json").is_file():
            import torch

            from spidr_hf import SpidrConfig, SpidrFeatureExtractor, SpidrForPreTraining

            torch.manual_seed(self.seed)  # the same architecture with its initial random weights
            SpidrForPreTraining(SpidrConfig.from_pretrained(self.model)).save_pretrained(random_init)
            SpidrFeatureExtractor().save_pretrained(random_init)
            did_work = True
        return did_work

    def units_done(self, name: str) -> bool:
        folder = self.sources / name
        return (folder / "train-units/extract.json").is_file() and (folder / "benchmark-units").is_dir()

    def unit_groups(self) -> dict[str, dict[str, tuple[Path, str, int]]]:
        """The SpidR sources by the network that runs them: (model folder, unit kind, layer) of each."""
        models = {
            name: self.model if kind == "codebook" else self.work / "models" / f"kmeans_l{layer}"
            for name, (kind, layer) in SPIDR_SOURCES.items()
        }
        return {
            "model": {name: (models[name], *SPIDR_SOURCES[name]) for name in SPIDR_SOURCES},
            "random_init": {"random_init": (self.work / "models/random_init", "codebook", 6)},
        }

    def encode_group(self, group: str) -> None:
        """The units of one network's sources, from one pass over the corpus and the benchmark (`--encode-group`:
        the units stage runs each network in a process of its own)."""
        from spidr_hf.slm.ladder import encode_sources
        from spidr_hf.units.encoder import SpidrUnitEncoder

        sources = self.unit_groups()[group]
        for name in sources:  # a cut-short write of the folders: written again, from the cache
            shutil.rmtree(self.sources / name, ignore_errors=True)
        encoders = {
            name: SpidrUnitEncoder.from_pretrained(folder, kind, layer, device="cpu", num_workers=0)
            for name, (folder, kind, layer) in sources.items()
        }
        encode_sources(encoders, self.corpus, self.benchmark, self.sources, self.work / "cache" / group)

    def units_stage(self) -> bool:
        from spidr_hf.slm import baselines

        commands = []
        for group, sources in self.unit_groups().items():
            if not all(self.units_done(name) for name in sources):
                command = [sys.executable, str(Path(__file__).resolve()), "--work", self.work, "--encode-group", group]
                command += ["--model", self.model] + (["--tiny"] if self.tiny else [])
                commands.append((command, self.work / "logs" / f"units-{group}.log"))
        # The two networks' passes at once, a thread each (see `run_parallel`)
        self.run_parallel(commands, self.jobs)
        did_work = bool(commands)
        if not self.units_done("log_mel"):
            shutil.rmtree(self.sources / "log_mel", ignore_errors=True)
            folder = self.sources / "log_mel"
            fit = (self.settings["clusters"], self.settings["kmeans_frames"], self.seed)
            kmeans = baselines.corpus_log_mel_units(self.corpus, folder / "train-units", *fit)
            baselines.benchmark_log_mel_units(kmeans, self.benchmark, folder / "benchmark-units")
            did_work = True
        if not self.units_done("phones"):
            shutil.rmtree(self.sources / "phones", ignore_errors=True)
            baselines.corpus_phone_units(self.corpus, self.sources / "phones/train-units")
            baselines.benchmark_phone_units(self.benchmark, self.sources / "phones/benchmark-units")
            did_work = True
        if not (self.sources / "text_phones/train-units/extract.json").is_file():
            shutil.rmtree(self.sources / "text_phones", ignore_errors=True)
            sentences = self.settings["text_sentences"]
            baselines.text_phone_units(self.sources / "text_phones/train-units", sentences, self.seed)
            did_work = True
        return did_work

    def ulm_stage(self) -> bool:
        commands = []
        for name in SOURCES:
            ulm = self.sources / name / "ulm"
            if (ulm / "model.safetensors").is_file():
                continue
            script, config = ROOT / "training/train_ulm.py", ROOT / "training/configs/ulm_ladder.yaml"
            command = [sys.executable, str(script), str(config), f"--units={self.sources / name / 'train-units'}"]
            command += [f"--output_dir={ulm}", f"--max_steps={self.settings['ulm_steps']}", f"--seed={self.seed}"]
            if self.tiny:
                command += ["--block_size=64", "--per_device_train_batch_size=2", "--eval_fraction=0.2"]
            commands.append((command, self.work / "logs" / f"ulm-{name}.log"))
        self.run_parallel(commands, self.jobs)
        return bool(commands)

    def score_stage(self) -> bool:
        commands = []
        for name in SOURCES:
            output = self.sources / name / "score"
            ulm = self.sources / name / "ulm"
            scores = output / "scores.json"
            if scores.is_file() and scores.stat().st_mtime > (ulm / "model.safetensors").stat().st_mtime:
                continue
            units = self.sources / ("phones" if name == "text_phones" else name) / "benchmark-units"
            where = ["--units", units, "--data", self.benchmark, "--output", output, "--overwrite"]
            options = ["--device", "cpu", "--seed", self.seed, "--batch-size", 64]
            command = [sys.executable, "-m", "spidr_hf", "slm-score", ulm, *where, *options]
            commands.append((command, self.work / "logs" / f"score-{name}.log"))
        self.run_parallel(commands, self.jobs)
        for name in SOURCES:  # what each printed
            log = self.work / "logs" / f"score-{name}.log"
            if log.is_file():
                print(f"   {name}: " + " | ".join(line for line in log.read_text().splitlines() if " % [" in line))
        return bool(commands)

    def quality_stage(self) -> bool:
        from spidr_hf.slm.ladder import source_quality

        path = self.work / "unit_quality.json"
        quality = json.loads(path.read_text()) if path.is_file() else {}
        did_work = False
        for name in SOURCES:
            if name in quality or name == "text_phones":  # text phones have no speech to measure
                continue
            train_units = None if name == "phones" else self.sources / name / "train-units"
            quality[name] = source_quality(self.corpus, train_units, self.settings["abx_utterances"], self.seed)
            path.write_text(json.dumps(quality, indent=2) + "\n")
            print(f"   {name}: ABX within {quality[name]['abx_within']:.2f} %, PNMI {quality[name]['pnmi']:.3f}")
            did_work = True
        return did_work


def corpus_hours(corpus: Path) -> float:
    """Hours of speech of a `spidr-hf corpus` folder, all splits (its alignments end with the audio)."""
    from datasets import load_from_disk

    splits = load_from_disk(str(corpus)).values()
    return sum(phones[-1]["end"] for split in splits for phones in split.select_columns("phones")["phones"]) / 3600


def bf16_cpu() -> bool:
    """Whether this CPU has bf16 instructions (else training under bf16 autocast is ~10x slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


if __name__ == "__main__":
    main()
