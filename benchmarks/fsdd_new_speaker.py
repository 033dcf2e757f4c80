"""A new speaker's accent: Whisper tiny.en on one FSDD speaker it has not been fine-tuned on.

Run by hand (not a test), from the repository root, with ../shared/data/fsdd beside the checkout:

    .venv/bin/python benchmarks/fsdd_new_speaker.py                       # speaker yweweler, ~15 min on one core
    .venv/bin/python benchmarks/fsdd_new_speaker.py --speaker george

FSDD holds the digits 0-9 spoken by six speakers with different accents (60 clips each here). One
speaker is held out: 10 of their clips (one per digit) are the "few clips" a user could record, and
their other 50 clips are the test set of every arm. The arms, all scored on those 50 clips by WER
(lower-cased, punctuation removed; the transcript is the digit's word, "seven"):

- pre-trained: Whisper tiny.en as it is (each run's baseline; scored padded to 30 s);
- other speakers: fine-tuned on the other five speakers' 200 training clips;
- few clips: fine-tuned on the held-out speaker's 10 clips only;
- both: the 200 clips and the 10;
- scratch: the "other speakers" arm from random weights (`model.pretrained: false`, lr 1e-3).

Each arm is one `tunesmith.finetune` call with the settings of examples/speech-recognition.yaml
(batch 16, lr 1e-5, 10% warm-up) and about the same number of optimizer steps (~40); its best
checkpoint by validation WER is the one scored. Prints a Markdown table and writes the numbers to
benchmarks/out/fsdd_new_speaker.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "fsdd"
OUT = REPO / "benchmarks" / "out"
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def tables(speaker: str, folder: Path) -> dict[str, Path]:
    """other.csv (the other speakers' train clips), few.csv (10 of the speaker's clips, one per digit),
    both.csv, and test.csv (the speaker's other 50 clips): path,transcript,speaker rows."""
    with (DATA / "metadata.csv").open(newline="") as f:
        rows = [{"path": str(DATA / r["path"]), "transcript": DIGITS[int(r["label"])], "speaker": r["speaker"],
                 "split": r["split"], "label": r["label"]} for r in csv.DictReader(f)]
    other = [r for r in rows if r["speaker"] != speaker and r["split"] == "train"]
    theirs = sorted((r for r in rows if r["speaker"] == speaker), key=lambda r: r["path"])
    few, seen = [], set()
    for r in theirs:
        if r["split"] == "train" and r["label"] not in seen:
            few.append(r)
            seen.add(r["label"])
    test = [r for r in theirs if r not in few]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in (("other", other), ("few", few), ("both", other + few), ("test", test)):
        paths[name] = folder / f"{name}.csv"
        with paths[name].open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "transcript", "speaker"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(part)
    return paths


def arm(name: str, train: Path, test: Path, epochs: int, args: argparse.Namespace, **extra) -> dict:
    import tunesmith

    config = {
        "task": "speech-recognition", "output_dir": str(OUT / "fsdd-speaker" / args.speaker / name),
        "model": {"source": "demo:whisper-tiny-en", **extra.get("model", {})},
        "data": {"train": str(train), "validation": str(test)},
        "speech_recognition": {"audio_column": "path", "text_column": "transcript", "max_new_tokens": 8},
        "training": {"num_train_epochs": epochs, "learning_rate": extra.get("lr", 1e-5), "per_device_train_batch_size": 16,
                     "warmup_ratio": 0.1, "seed": args.seed},
    }
    start = time.perf_counter()
    result = tunesmith.finetune(config, quiet=True)
    return {"baseline_wer": result.baseline["wer"], "wer": result.final["wer"], "cer": result.final["cer"],
            "empty": result.final["empty_predictions"], "best_step": result.best_step,
            "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--speaker", default="yweweler", help="the FSDD speaker held out")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    paths = tables(args.speaker, OUT / "fsdd-speaker" / args.speaker / "tables")
    # ~40 optimizer steps each: 200 clips are 13 batches of 16, 10 clips one batch.
    runs = {
        "other speakers (200 clips)": arm("other", paths["other"], paths["test"], 3, args),
        "few clips of the speaker (10)": arm("few", paths["few"], paths["test"], 40, args),
        "both (210 clips)": arm("both", paths["both"], paths["test"], 3, args),
        "scratch, other speakers": arm("scratch", paths["other"], paths["test"], 3, args,
                                       model={"pretrained": False}, lr=1e-3),
    }
    record = {"speaker": args.speaker, "seed": args.seed, "runs": runs,
              "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}
    (OUT / "fsdd_new_speaker.json").write_text(json.dumps(record, indent=2) + "\n")
    first = next(iter(runs.values()))
    print(f"held-out speaker {args.speaker}: 50 test clips\n\n| arm | WER | CER | empty | best step | wall s |\n|---|---|---|---|---|---|")
    print(f"| pre-trained, as it is | {first['baseline_wer']:.4f} | | | | |")
    for name, r in runs.items():
        print(f"| {name} | {r['wer']:.4f} | {r['cer']:.4f} | {r['empty']:.2f} | {r['best_step']} | {r['wall_s']} |")


if __name__ == "__main__":
    main()
