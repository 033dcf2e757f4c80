"""SST-2 with demo:minilm on CPU: tunesmith against Hugging Face `Trainer`, at its defaults and at its best.

Run by hand (not a test), from the repository root, with the SST-2 TSV files in ../shared/data/sst2:

    .venv/bin/python benchmarks/sst2_vs_trainer.py                      # full train set, one epoch each
    .venv/bin/python benchmarks/sst2_vs_trainer.py --train-rows 2000    # quick smoke check
    .venv/bin/python benchmarks/sst2_vs_trainer.py --arms tunesmith trainer   # two arms only

Five arms by default, alternating, each `--repeats` times: tunesmith in fp32 (`mixed_precision: no`),
tunesmith with `mixed_precision: auto` (bf16 on a CPU with AMX or AVX512-BF16, fp32 elsewhere), and the
anchor three ways: Trainer's defaults (random order, fp32), `train_sampling_strategy="group_by_length"`,
and group_by_length with `bf16=True`, its best on such a CPU. Ratios are against the fastest Trainer arm.

Both sides get the same weights (all-MiniLM-L6-v2 with a new 2-label head), the same rows, batch
size, optimizer steps, learning rate (linear schedule, the same number of warm-up steps), weight
decay, max_length and seed; each side's defaults are kept for everything else, i.e. what a user of
each tool would run. tunesmith: full fine-tune (freeze none, layer_lr_decay 1.0), no early stopping,
one evaluation at the last step. Trainer: plain torch Dataset tokenized once, DataCollatorWithPadding
(dynamic padding), no evaluation or saving during training, then `predict` on dev.

Each run is its own subprocess (the arms in turn, `--repeats` times), so its peak
resident memory (ru_maxrss of that process) is its own. Throughput is training rows / seconds of
the training loop only (no model load, tokenization or final evaluation); for tunesmith the loop
clock (`RunResult.train_seconds`) also holds the evaluation and checkpoint writes at the last step,
which are timed separately and subtracted (both numbers are recorded). Prints a Markdown table
and writes the raw numbers to benchmarks/out/sst2_vs_trainer.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
BATCH_SIZE = 32
EVAL_BATCH_SIZE = 64
MAX_LENGTH = 128
WEIGHT_DECAY = 0.01
WARMUP_RATIO = 0.1
# arm: what it runs. tunesmith arms set `training.mixed_precision`; Trainer arms its sampler and bf16 flag.
ARMS = {
    "tunesmith": {"tool": "tunesmith", "precision": "no", "title": "tunesmith, fp32"},
    "tunesmith-auto": {"tool": "tunesmith", "precision": "auto", "title": "tunesmith, mixed_precision auto"},
    "trainer": {"tool": "trainer", "sampling": "random", "bf16": False, "title": "Trainer, defaults (random order, fp32)"},
    "trainer-grouped": {"tool": "trainer", "sampling": "group_by_length", "bf16": False,
                        "title": "Trainer, group_by_length"},
    "trainer-grouped-bf16": {"tool": "trainer", "sampling": "group_by_length", "bf16": True,
                             "title": "Trainer, group_by_length + bf16"},
}


# ---- data (parent) ------------------------------------------------------------------------------

def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    """SST-2 rows as (texts, int labels); GLUE TSV is unquoted, so quoting is off."""
    texts, labels = [], []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            text, label = row["text"], (row["label"] or "").strip()
            if text.strip() and label:  # tunesmith skips such rows too (data.bad_rows: skip)
                texts.append(text)
                labels.append(int(label))
    return texts, labels


def training_file(data_dir: Path, rows: int | None, seed: int) -> tuple[Path, int]:
    """The training file both sides read: the original, or a seeded subsample of `rows` rows."""
    source = data_dir / "train.tsv"
    texts, labels = read_tsv(source)
    if rows is None or rows >= len(texts):
        return source, len(texts)
    import numpy as np

    keep = sorted(np.random.default_rng(seed).permutation(len(texts))[:rows].tolist())
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"sst2_train_{rows}_seed{seed}.tsv"
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("text\tlabel\n")
        for i in keep:
            assert "\t" not in texts[i] and "\n" not in texts[i]
            f.write(f"{texts[i]}\t{labels[i]}\n")
    return path, len(keep)


# ---- workers (one per subprocess) ---------------------------------------------------------------

def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def probe() -> dict:
    """Wall clock, this process's CPU seconds, the machine's busy CPU seconds and memory, now."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    memory = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                memory[line.split(":")[0]] = int(line.split()[1]) / 1024
    times = os.times()
    return {"wall": time.perf_counter(), "cpu": times.user + times.system,
            "machine_busy": (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), **memory}


def loop_facts(begin: dict, end: dict) -> dict:
    """What happened between two probes: CPU use, the share of the machine other processes took, memory."""
    wall, cpu = end["wall"] - begin["wall"], end["cpu"] - begin["cpu"]
    cores = len(os.sched_getaffinity(0))
    others = (end["machine_busy"] - begin["machine_busy"] - cpu) / (wall * cores)
    return {"loop_wall_seconds": wall, "loop_cpu_seconds": cpu, "loop_cpu_utilization": cpu / (wall * cores),
            "other_processes_cpu_share": max(0.0, others), "rss_mib_at_loop_start": begin["VmRSS"],
            "peak_rss_mib_before_loop": begin["VmHWM"], "peak_rss_mib_after_loop": end["VmHWM"]}


def run_tunesmith(args: argparse.Namespace) -> dict:
    import tunesmith
    import tunesmith.engine.loop as loop
    from tunesmith.engine.progress import ProgressDisplay

    timed: dict[str, list[tuple[float, float]]] = {"evaluate": [], "save_best": [], "save_checkpoint": []}

    def timer(name, fn):
        def wrapped(*a, **k):
            start = probe()
            try:
                return fn(*a, **k)
            finally:
                end = probe()
                timed[name].append((end["wall"] - start["wall"], end["cpu"] - start["cpu"]))
        return wrapped

    # Timers only (behaviour unchanged): which parts of the loop clock are not training steps.
    loop.evaluate = timer("evaluate", loop.evaluate)
    loop.save_best = timer("save_best", loop.save_best)
    loop.save_checkpoint = timer("save_checkpoint", loop.save_checkpoint)
    started = [0.0]
    original_update = ProgressDisplay.update

    def progress(self, step, epoch, loss=None, lr=None):
        started[0] = started[0] or time.perf_counter()
        if step and step % 100 == 0:
            print(f"tunesmith step {step}/{args.max_steps} loss {loss} {time.perf_counter() - started[0]:.0f}s",
                  file=sys.stderr, flush=True)
        return original_update(self, step, epoch, loss, lr)

    ProgressDisplay.update = progress
    probes = {}
    original_start, original_stop = ProgressDisplay.start, ProgressDisplay.stop

    def on_start(self, total):  # called just before the loop clock starts
        probes.setdefault("begin", probe())
        return original_start(self, total)

    def on_stop(self):  # called just after the loop
        probes.setdefault("end", probe())
        return original_stop(self)

    ProgressDisplay.start, ProgressDisplay.stop = on_start, on_stop
    config = {
        "task": "text-classification",
        "output_dir": str(OUT / "runs" / f"{args.worker}-{args.run_id}"),
        "overwrite_output_dir": True,
        "model": {"source": "demo:minilm"},
        "data": {"train": args.train_file, "validation": args.dev_file, "max_length": MAX_LENGTH},
        "training": {
            "max_steps": args.max_steps, "learning_rate": args.learning_rate, "lr_scheduler_type": "linear",
            "warmup_steps": args.warmup_steps, "weight_decay": WEIGHT_DECAY, "seed": args.seed,
            "per_device_train_batch_size": BATCH_SIZE, "per_device_eval_batch_size": EVAL_BATCH_SIZE,
            "eval_strategy": "steps", "eval_steps": args.max_steps, "early_stopping_patience": None,
            "torch_compile": args.torch_compile, "mixed_precision": ARMS[args.worker]["precision"],
        },
        "strategy": {"freeze": "none", "gradual_unfreezing": False, "layer_lr_decay": 1.0},
    }
    from tunesmith.config import RunConfig
    from tunesmith.engine.accelerator import precision_choice

    precision, why = precision_choice(RunConfig.model_validate(config))
    start = time.perf_counter()
    result = tunesmith.finetune(config, quiet=True)
    wall = time.perf_counter() - start
    # loop.evaluate() runs at the last step (inside the clock) and for the final record (after it); the
    # baseline, before the clock, goes through evaluation.baseline_scores.
    in_loop = timed["evaluate"][:-1] + timed["save_best"] + timed["save_checkpoint"]
    not_steps, not_steps_cpu = sum(w for w, _ in in_loop), sum(c for _, c in in_loop)
    steps_only = result.train_seconds - not_steps
    samples = round(result.samples_per_second * result.train_seconds)
    facts = loop_facts(probes["begin"], probes["end"])
    return {
        "accuracy": result.final["accuracy"], "baseline_accuracy": result.baseline["accuracy"],
        "samples": samples, "train_seconds": steps_only, "samples_per_second": samples / steps_only,
        "cpu_seconds_per_1k_samples": 1000 * (facts["loop_cpu_seconds"] - not_steps_cpu) / samples,
        "reported_train_seconds": result.train_seconds, "reported_samples_per_second": result.samples_per_second,
        "in_loop_eval_seconds": sum(w for w, _ in timed["evaluate"][1:-1]),
        "checkpoint_and_best_save_seconds": sum(w for w, _ in timed["save_best"] + timed["save_checkpoint"]),
        "eval_seconds_each": [w for w, _ in timed["evaluate"]], "wall_seconds": wall, "run_dir": str(result.run_dir),
        "precision": precision, "precision_reason": why,
        **facts,
    }


class _Rows:
    """A plain torch-style map dataset of pre-tokenized rows (no `datasets` dependency)."""

    def __init__(self, encoded, labels):
        # Plain lists only: the tokenizer's per-row Rust `Encoding` objects are not kept alive.
        self.keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in encoded]
        self.encoded, self.labels = {k: list(encoded[k]) for k in self.keys}, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {**{k: self.encoded[k][i] for k in self.keys}, "labels": self.labels[i]}


def run_trainer(args: argparse.Namespace) -> dict:
    import numpy as np
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)
    from transformers.utils import logging as hf_logging

    from tunesmith.models.sources import resolve_source

    hf_logging.set_verbosity_error()
    arm = ARMS[args.worker]
    location = resolve_source("demo:minilm").location
    set_seed(args.seed)  # before loading, so the new head is seeded as in tunesmith
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=2)

    def dataset(path):
        texts, labels = read_tsv(Path(path))
        return _Rows(tokenizer(texts, truncation=True, max_length=MAX_LENGTH), labels)

    train, dev = dataset(args.train_file), dataset(args.dev_file)

    probes = {}

    class Progress(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            self.start = time.perf_counter()
            probes["begin"] = probe()

        def on_train_end(self, a, state, control, **kw):
            probes["end"] = probe()

        def on_step_end(self, a, state, control, **kw):
            if state.global_step % 100 == 0:
                print(f"trainer step {state.global_step}/{args.max_steps} {time.perf_counter() - self.start:.0f}s",
                      file=sys.stderr, flush=True)

    training_args = TrainingArguments(
        output_dir=str(OUT / "runs" / f"{args.worker}-{args.run_id}"), max_steps=args.max_steps,
        per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=EVAL_BATCH_SIZE,
        learning_rate=args.learning_rate, lr_scheduler_type="linear", warmup_steps=args.warmup_steps,
        weight_decay=WEIGHT_DECAY, seed=args.seed, eval_strategy="no", save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True, torch_compile=args.torch_compile,
        train_sampling_strategy=arm["sampling"], bf16=arm["bf16"],
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train,
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[Progress()])
    start = time.perf_counter()
    out = trainer.train()
    wall_train = time.perf_counter() - start
    eval_start = time.perf_counter()
    predicted = trainer.predict(dev)
    eval_seconds = time.perf_counter() - eval_start
    accuracy = float((np.argmax(predicted.predictions, -1) == predicted.label_ids).mean())
    steps_per_epoch = math.ceil(len(train) / BATCH_SIZE)
    epochs, rest = divmod(args.max_steps, steps_per_epoch)
    samples = epochs * len(train) + min(rest * BATCH_SIZE, len(train))
    seconds = out.metrics["train_runtime"]  # the training loop only (no eval/save configured)
    facts = loop_facts(probes["begin"], probes["end"])
    return {
        "cpu_seconds_per_1k_samples": 1000 * facts["loop_cpu_seconds"] / samples,
        "accuracy": accuracy, "samples": samples, "train_seconds": seconds, "samples_per_second": samples / seconds,
        "train_call_seconds": wall_train, "eval_seconds": eval_seconds, "train_loss": out.metrics.get("train_loss"),
        "optimizer": training_args.optim.value if hasattr(training_args.optim, "value") else str(training_args.optim),
        "precision": "bf16" if arm["bf16"] else "no", "sampling": arm["sampling"],
        **facts,
    }


def worker(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    result = (run_tunesmith if ARMS[args.worker]["tool"] == "tunesmith" else run_trainer)(args)
    result.update(arm=args.worker, tool=ARMS[args.worker]["tool"], run_id=args.run_id, peak_rss_mib=peak_rss_mib(),
                  process_seconds=time.perf_counter() - start)
    Path(args.result_file).write_text(json.dumps(result, indent=2), encoding="utf-8")


# ---- parent ---------------------------------------------------------------------------------------

def machine() -> dict:
    import torch
    import transformers

    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "nproc": len(os.sched_getaffinity(0)),
            "cpu": _cpu_name(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "transformers": transformers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_flags": _bf16_flags()}


def _bf16_flags() -> list[str]:
    """The CPU's bf16 matrix-instruction flags as /proc/cpuinfo names them."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(set(flags.split()) & {"avx512_bf16", "amx_bf16", "amx_tile"})


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def spawn(tool: str, run_id: str, args: argparse.Namespace, train_file: Path, log) -> dict:
    result_file = OUT / f"result-{tool}-{run_id}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--worker", tool, "--run-id", run_id, "--result-file", str(result_file),
               "--train-file", str(train_file), "--dev-file", str(Path(args.data_dir) / "dev.tsv"),
               "--max-steps", str(args.max_steps), "--warmup-steps", str(args.warmup_steps),
               "--learning-rate", str(args.learning_rate), "--seed", str(args.seed)] + (
                   ["--torch-compile"] if args.torch_compile else [])
    print(f"{tool} run {run_id}: started", file=sys.stderr, flush=True)
    proc = subprocess.run(command, stdout=log, stderr=log, cwd=REPO)
    if proc.returncode != 0 or not result_file.exists():
        sys.exit(f"{tool} run {run_id} failed (exit {proc.returncode}); see the worker log")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    print(f"{tool} run {run_id}: accuracy {result['accuracy']:.4f}, {result['samples_per_second']:.1f} samples/s, "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB, other processes took "
          f"{result['other_processes_cpu_share']:.0%} of the CPUs", file=sys.stderr, flush=True)
    return result


def padding_stats(train_file: Path, seed: int) -> dict:
    """Tokens per epoch each side computes: real tokens, and padded batch tokens (batch x its longest row)
    with tunesmith's length-grouped batches and with the random batches of Trainer's default sampler."""
    import torch
    from transformers import AutoTokenizer

    from tunesmith.engine.batching import GroupedBatchSampler
    from tunesmith.models.sources import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_source("demo:minilm").location)
    lengths = [len(ids) for ids in tokenizer(read_tsv(train_file)[0], truncation=True,
                                             max_length=MAX_LENGTH)["input_ids"]]
    grouped = GroupedBatchSampler(lengths, BATCH_SIZE, seed)
    grouped.start_epoch(0)
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    random = [order[i:i + BATCH_SIZE] for i in range(0, len(order), BATCH_SIZE)]

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    return {"real_tokens": sum(lengths), "mean_length": sum(lengths) / len(lengths),
            "tunesmith_padded_tokens": padded(grouped.epoch_batches()), "trainer_padded_tokens": padded(random)}


def summarize(runs: list[dict], steps_per_epoch: int, max_steps: int) -> dict:
    """Medians per arm, and each arm's ratios against the fastest Trainer arm (the anchor at its best)."""
    keys = ("accuracy", "samples_per_second", "train_seconds", "peak_rss_mib", "cpu_seconds_per_1k_samples",
            "other_processes_cpu_share", "loop_cpu_utilization")
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    s: dict = {"arms": {}}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        row = {k: statistics.median(r[k] for r in mine) for k in keys}
        row["samples_per_second_range"] = [min(r["samples_per_second"] for r in mine),
                                           max(r["samples_per_second"] for r in mine)]
        row["seconds_per_epoch"] = row["train_seconds"] * steps_per_epoch / max_steps
        row["precision"] = mine[0].get("precision")
        if ARMS[arm]["tool"] == "tunesmith":
            row["reported_samples_per_second"] = statistics.median(r["reported_samples_per_second"] for r in mine)
        s["arms"][arm] = row
    anchors = [a for a in arms if ARMS[a]["tool"] == "trainer"]
    if anchors:
        best = max(anchors, key=lambda a: s["arms"][a]["samples_per_second"])
        b = s["arms"][best]
        s["best_anchor"] = best
        for arm in arms:
            r = s["arms"][arm]
            r["vs_best_anchor"] = {"samples_per_second": r["samples_per_second"] / b["samples_per_second"],
                                   "peak_rss": r["peak_rss_mib"] / b["peak_rss_mib"],
                                   "accuracy_difference": r["accuracy"] - b["accuracy"]}
    return s


def table(s: dict, runs: list[dict], padding: dict) -> str:
    lines = ["| arm | dev accuracy | samples/s (training steps; range) | time per epoch | peak RSS | CPU s per 1k samples "
             "| other processes' CPU share | × best anchor (samples/s, RSS) |", "|---|---|---|---|---|---|---|---|"]
    for arm, r in s["arms"].items():
        q = r.get("vs_best_anchor")
        low, high = r["samples_per_second_range"]
        best = " (best anchor)" if arm == s.get("best_anchor") else ""
        lines.append(f"| {ARMS[arm]['title']}{best} [{r['precision']}] | {r['accuracy']:.4f} | "
                     f"{r['samples_per_second']:.1f} ({low:.1f}–{high:.1f}) | {r['seconds_per_epoch'] / 60:.1f} min | "
                     f"{r['peak_rss_mib']:.0f} MiB | {r['cpu_seconds_per_1k_samples']:.0f} | "
                     f"{r['other_processes_cpu_share']:.0%} | "
                     + (f"{q['samples_per_second']:.2f}×, {q['peak_rss']:.2f}× |" if q else "– |"))
    n = max(sum(r["arm"] == arm for r in runs) for arm in s["arms"])
    note = f"median of {n} runs per arm" if n > 1 else "one run per arm"
    return "\n".join(lines) + (f"\n\n{note}; padded tokens per epoch: tunesmith {padding['tunesmith_padded_tokens']:,}, "
                               f"Trainer random order {padding['trainer_padded_tokens']:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data/sst2",
                        help="folder with train.tsv and dev.tsv (default, relative to the repository root: %(default)s)")
    parser.add_argument("--train-rows", type=int, help="train on a seeded sample of N rows (smoke checks)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (default: one epoch over the training rows)")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of runs over the arms, alternating")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="arms to run (default: all)")
    parser.add_argument("--torch-compile", action="store_true", help="both sides compile the model (torch.compile)")
    for hidden in ("--worker", "--run-id", "--result-file", "--train-file", "--dev-file", "--warmup-steps"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.warmup_steps = int(args.warmup_steps)
        worker(args)
        return
    data_dir = Path(args.data_dir) if Path(args.data_dir).is_absolute() else REPO / args.data_dir
    missing = [p.name for p in (data_dir / "train.tsv", data_dir / "dev.tsv") if not p.is_file()]
    if missing:
        sys.exit(f"SST-2 not found: {', '.join(missing)} missing in {data_dir}. Put GLUE SST-2 train.tsv and dev.tsv "
                 "(tab-separated, header text<TAB>label) there or pass --data-dir")
    args.data_dir = str(data_dir)
    OUT.mkdir(parents=True, exist_ok=True)
    train_file, rows = training_file(data_dir, args.train_rows, args.seed)
    steps_per_epoch = math.ceil(rows / BATCH_SIZE)
    args.max_steps = args.max_steps or steps_per_epoch
    args.warmup_steps = int(WARMUP_RATIO * args.max_steps)  # the same integer for both (tunesmith rounds down)
    print(f"{rows} training rows, {args.max_steps} steps ({args.max_steps / steps_per_epoch:.2f} epochs), "
          f"{args.warmup_steps} warm-up steps", file=sys.stderr, flush=True)
    runs = []
    with (OUT / "sst2_vs_trainer.log").open("w") as log:
        for i in range(args.repeats):
            for arm in args.arms:
                runs.append(spawn(arm, str(i), args, train_file, log))
    summary = summarize(runs, steps_per_epoch, args.max_steps)
    padding = padding_stats(train_file, args.seed)
    settings = {k: v for k, v in vars(args).items() if v is not None and k not in ("worker", "run_id", "result_file")}
    report = {"machine": machine(), "command": " ".join([".venv/bin/python", "benchmarks/sst2_vs_trainer.py",
                                                        *sys.argv[1:]]),
              "settings": {**settings, "train_rows": rows, "steps_per_epoch": steps_per_epoch,
                           "batch_size": BATCH_SIZE, "max_length": MAX_LENGTH, "weight_decay": WEIGHT_DECAY},
              "summary": summary, "padding": padding, "runs": runs}
    name = ("sst2_vs_trainer" + ("" if args.train_rows is None else f"_{rows}rows")
            + ("_compiled" if args.torch_compile else "") + ".json")
    (OUT / name).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(summary, runs, padding))
    print(f"\nraw numbers: {OUT / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
