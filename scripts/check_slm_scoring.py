"""
Check `spidr-hf slm-score`'s accuracies against the official ZeroSpeech toolkit (zerospeech-benchmarks 0.9.4) on
random gold files and submissions (ties, several voices, frequency bands, missing frequencies).

    python scripts/check_slm_scoring.py write DIR            # spidr-hf's environment: data and our accuracies
    ZR_VENV/bin/python scripts/check_slm_scoring.py official DIR   # the toolkit's environment: its accuracies, compared

The toolkit needs pydantic<2 and pandas 2.0 (its own virtualenv), and contacts the network at import unless
~/zr-data/repo.json exists with an mtime older than a week (this script creates such a file when there is none).
"""

import csv
import json
import os
import random
import sys
import time
from pathlib import Path


def write(folder: Path, seed: int = 0) -> None:
    from spidr_hf.slm.score import lexical_accuracy, read_gold, read_submission, syntactic_accuracy

    rng = random.Random(seed)
    ours = {}
    for task in ("lexical", "syntactic"):
        rows, lines = [], []
        for id in range(200):
            # every word has a frequency, as in sLM21 (the toolkit's banding fails on a missing one); non-words none
            frequency = rng.choice(["0", "1", "4", "5", "19", "20", "99", "100", "3000"])
            kind = rng.choice(["agreement", "order", "determiner"])
            for voice in rng.sample(["v1", "v2", "v3", "v4"], k=rng.randint(1, 4)):
                for correct in ("1", "0"):
                    filename = f"{task}-{id}-{voice}-{correct}"
                    if task == "lexical":
                        word = f"w{id}" if correct == "1" else f"nw{id}"
                        rows.append({"id": id, "filename": filename, "voice": voice,
                                     "frequency": frequency if correct == "1" else "",
                                     "word": word, "phones": "a b", "length": 2, "correct": correct})  # fmt: skip
                    else:
                        rows.append({"filename": filename, "id": id, "voice": voice, "type": kind, "subtype": kind[:3],
                                     "correct": correct, "transcription": f"s{id}{correct}"})  # fmt: skip
                    lines.append(f"{filename} {rng.choice([-1.0, -2.0, -3.0, rng.uniform(-5, 0)])!r}")
        (folder / task).mkdir(parents=True, exist_ok=True)
        with open(folder / task / "gold.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (folder / task / "dev.txt").write_text("\n".join(lines) + "\n")
        gold = read_gold(folder / task / "gold.csv", task)
        scores = read_submission(folder / task / "dev.txt")
        ours[task] = lexical_accuracy(gold, scores) if task == "lexical" else syntactic_accuracy(gold, scores)
    (folder / "ours.json").write_text(json.dumps(ours, indent=2))
    print(f"lexical all {ours['lexical']['all']:.4f} in-vocab {ours['lexical']['in_vocab']:.4f}; "
          f"syntactic {ours['syntactic']['all']:.4f}")  # fmt: skip


def official(folder: Path) -> None:
    repo = Path.home() / "zr-data" / "repo.json"
    if not repo.exists():  # the toolkit downloads its index at import unless it holds one older than a week
        repo.parent.mkdir(parents=True, exist_ok=True)
        repo.write_text('{"last_modified": "2000-01-01T00:00:00", "datasets": [], "samples": [], "checkpoints": []}')
        old = time.time() - 30 * 86400
        os.utime(repo, (old, old))
    import numpy as np
    from zerospeech.tasks.lm.lexical import LexicalTask
    from zerospeech.tasks.lm.syntactic import SyntacticTask

    ours = json.loads((folder / "ours.json").read_text())
    lexical = LexicalTask.load_and_format(folder / "lexical/dev.txt", folder / "lexical/gold.csv")
    by_pair = LexicalTask.eval_by_pair(lexical)
    by_frequency = LexicalTask.eval_by_frequency(by_pair)
    in_vocab = by_frequency[by_frequency["frequency"] != "oov"]
    theirs = {
        "lexical all": 100 * by_pair["score"].mean(),
        "lexical in-vocab": 100 * np.average(in_vocab["score"].to_numpy(), weights=in_vocab["n"].to_numpy()),
    }
    syntactic_pairs, by_type = SyntacticTask().run_syntactic_comparison(
        folder / "syntactic/gold.csv", folder / "syntactic/dev.txt"
    )
    theirs["syntactic all"] = 100 * syntactic_pairs["score"].mean()
    mine = {
        "lexical all": ours["lexical"]["all"],
        "lexical in-vocab": ours["lexical"]["in_vocab"],
        "syntactic all": ours["syntactic"]["all"],
    }
    for _, row in by_type.iterrows():
        theirs[f"syntactic {row['type']}"] = 100 * row["score"]
        mine[f"syntactic {row['type']}"] = ours["syntactic"]["by_type"][row["type"]]["score"]
    worst = 0.0
    for key in theirs:
        print(f"{key:<24} official {theirs[key]:9.4f}   spidr-hf {mine[key]:9.4f}")
        worst = max(worst, abs(theirs[key] - mine[key]))
    print(f"largest difference: {worst:.2e} points")
    sys.exit(0 if worst < 1e-9 else 1)


if __name__ == "__main__":
    mode, folder = sys.argv[1], Path(sys.argv[2])
    write(folder) if mode == "write" else official(folder)
