"""demo:mobilenet-v2 + LR-ASPP on cell nuclei: tunesmith's training epoch against torchvision's reference loop.

Run by hand (not a test), from the repository root, with ../shared/data/nuclei_dsb2018 beside it and
torchvision's reference scripts exported to a folder from any clone of pytorch/vision (they are
imported from there at run time, not copied here):

    mkdir -p /tmp/vision-ref
    git --git-dir=vision/.git archive HEAD references/segmentation | tar -x -C /tmp/vision-ref
    .venv/bin/python benchmarks/nuclei_vs_torchvision_reference.py \\
        --reference /tmp/vision-ref/references/segmentation    # 160 images x 2 epochs, 3 arms, ~5 min on 2 idle cores
    ... --max-train 32 --max-eval 8                             # smoke, ~2 min
    ... --arms all --max-train 32 --max-eval 4                  # every anchor setting and tunesmith in fp32, ~10 min
    ... --rounds 3                                              # alternate the arms 3 times, median: a shared machine

Both sides fine-tune torchvision's ImageNet MobileNetV2 trunk under a new LR-ASPP head for 2
classes (`create_segmentation_model("demo:mobilenet-v2", 2, None, "lraspp")`, built after the same
seed) on the same training pairs, decoded and augmented by tunesmith's own pieces, so the data
pipeline is identical: random rescale 0.5-2.0, a random 256x256 crop (mask padded with 255),
horizontal and vertical flips, each image's draws keyed on (seed, epoch, index); batches of 8; AdamW
(learning rate 1e-3, weight decay 0.01 except biases and norms) with the same linear schedule and
warm-up (10% of the steps); per-pixel cross-entropy ignoring 255.

tunesmith: `tunesmith.finetune` with its defaults (`mixed_precision: auto`, DataLoader workers
sized to the spare cores, gradient clipping at 1.0), evaluating only at the last step (timed and
taken out of the loop clock with its saves, benchmarks/_arms.py).

Anchor: pytorch/vision `references/segmentation/train.py`, imported from `--reference`: its
`train_one_epoch` (with its `utils.MetricLogger`) and `criterion`, called once per epoch, fed a
DataLoader over tunesmith's `SegmentationDataset` and `pad_batch` with the reference's own sampler
(`RandomSampler`, `drop_last`). The reference knows only CUDA AMP, so its arms set what it would
take on this CPU around its forward: bf16 autocast (outputs cast back to fp32, as Accelerate does
for tunesmith), DataLoader workers, channels_last; arm names say which
(`reference-bf16-w1-nhwc`). It cannot clip gradients without editing its loop, so it does not.
The default arms are tunesmith, the reference with tunesmith's settings here (bf16, one worker,
NCHW) and the reference's fastest: channels_last speeds both precisions' forward and backward on
this model, and one worker overlaps decoding with compute.

Throughput is training images per second of the last epoch (epoch 1 holds one-off warm-up: oneDNN
kernel choices, first page-ins), DataLoader start-up included on both sides; epoch 1 is reported
too. After training, each arm's model is scored on the whole validation images the same way: one
image per batch as tunesmith's evaluation runs them (no padding), its class maps and
`segmentation_metrics` (mIoU, Dice); for tunesmith that is its last evaluation, not the best one it
restores. Each arm runs in its own subprocess (peak RSS its own; its largest child's apart: a
DataLoader worker, or the helper of ~430 MiB that importing this torch starts). Prints a Markdown table; raw numbers go to
benchmarks/out/nuclei_vs_torchvision_reference[-<train>x<epochs>-<eval>].json (each round also in
its own .roundN.json).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _arms import cpu_probe, in_loop_seconds, load_between, run_arms, time_loop_extras

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
DATA = REPO.parent / "shared" / "data" / "nuclei_dsb2018"
TRAIN_JSON, VAL_JSON = DATA / "annotations" / "instances_train.json", DATA / "annotations" / "instances_val.json"
SOURCE, HEAD, CLASSES = "demo:mobilenet-v2", "lraspp", ["background", "nucleus"]
SEED, BATCH, EVAL_BATCH, LR, WEIGHT_DECAY, WARMUP_RATIO = 42, 8, 1, 1e-3, 0.01, 0.1  # tunesmith's for this task


@dataclass(frozen=True)
class Anchor:
    """What the reference's CPU run is given: precision of its forward, DataLoader workers, memory format."""

    bf16: bool
    workers: int
    channels_last: bool


TUNESMITH_ARMS = {"tunesmith": "auto", "tunesmith-fp32": "no"}  # training.mixed_precision
REFERENCE_ARMS = {f"reference-{'bf16' if p else 'fp32'}-w{w}{'-nhwc' if cl else ''}": Anchor(p, w, cl)
                  for p in (True, False) for w in (1, 0) for cl in (False, True)}
ARMS = (*TUNESMITH_ARMS, *REFERENCE_ARMS)
DEFAULT_ARMS = "tunesmith,reference-bf16-w1,reference-bf16-w1-nhwc"


def steps_per_epoch(args: argparse.Namespace) -> int:
    return args.max_train // BATCH


def config_for(args: argparse.Namespace) -> dict:
    total = steps_per_epoch(args) * args.epochs
    return {"task": "image-segmentation", "output_dir": str(OUT / "runs" / f"nuclei-vs-reference-{args.arm}"),
            "overwrite_output_dir": True, "model": {"source": SOURCE},
            "data": {"train": str(TRAIN_JSON), "validation": str(VAL_JSON), "max_train_samples": args.max_train,
                     "max_eval_samples": args.max_eval},
            "image_segmentation": {"image_root": str(DATA / "images"), "vflip": True, "head": HEAD},
            "training": {"num_train_epochs": args.epochs, "per_device_train_batch_size": BATCH,
                         "per_device_eval_batch_size": EVAL_BATCH, "learning_rate": LR, "weight_decay": WEIGHT_DECAY,
                         "warmup_ratio": WARMUP_RATIO, "lr_scheduler_type": "linear", "seed": SEED,
                         # one evaluation, at the end; a log at each epoch's last step stamps its end
                         "eval_strategy": "steps", "eval_steps": total, "early_stopping_patience": None,
                         "logging_steps": steps_per_epoch(args), "mixed_precision": TUNESMITH_ARMS[args.arm]}}


def run_tunesmith(args: argparse.Namespace) -> dict:
    import tunesmith
    from tunesmith.engine.progress import ProgressDisplay

    spent = time_loop_extras()
    extras = lambda: sum(spent["evaluate"]) + sum(spent["save"])  # noqa: E731 - read at each stamp
    stamps: list[tuple[float, float]] = []  # (time, in-loop extras so far): loop start, then each epoch's end
    probes: dict[str, dict] = {}
    original_start = ProgressDisplay.start

    def on_start(self, total):  # just before the loop clock starts, after the baseline evaluation
        stamps.append((time.perf_counter(), extras()))
        probes["begin"] = cpu_probe()
        return original_start(self, total)

    evals: list[dict] = []

    def on_record(record: dict) -> None:
        if record["phase"] == "train":  # logged at each epoch's last step, before its evaluation
            stamps.append((time.perf_counter(), extras()))
            probes["end"] = cpu_probe()
        elif record["phase"] == "eval":
            evals.append(record)

    ProgressDisplay.start = on_start
    said = precision_messages()
    result = tunesmith.finetune(config_for(args), quiet=True, on_record=on_record)
    epochs = [round(b[0] - a[0] - (b[1] - a[1]), 3) for a, b in zip(stamps, stamps[1:])]
    last = evals[-1]
    return {"epoch_seconds": epochs, "train_seconds": result.train_seconds - in_loop_seconds(spent),
            "miou": last["miou"], "dice": last["dice"], "pixel_accuracy": last["pixel_accuracy"],
            "miou_before": result.baseline["miou"], "precision_log": said,
            **load_between(probes["begin"], probes["end"])}


def precision_messages() -> list[str]:
    """Collects what tunesmith's log says about precision (it logs at INFO, which quiet runs do not show)."""
    said: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "precision" in record.getMessage():
                said.append(record.getMessage())

    logger = logging.getLogger("tunesmith")
    logger.addHandler(Collect(logging.INFO))
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    return said


def nuclei_rows(args: argparse.Namespace):
    """(train rows, validation rows, mask reader): what tunesmith's preflight reads and samples."""
    from tunesmith.data.labelled import sample
    from tunesmith.data.masks import MaskReader, read_segmentation

    reader = MaskReader()
    read = lambda path: read_segmentation(path, "image", "mask", str(DATA / "images"), reader)[0]  # noqa: E731
    return sample(read(TRAIN_JSON), args.max_train, SEED), sample(read(VAL_JSON), args.max_eval, SEED), reader


def images_and_targets(features: list[dict]) -> tuple:
    """tunesmith's `pad_batch` as the (images, targets) pair the reference's loop unpacks."""
    from tunesmith.tasks._segmentation import pad_batch

    batch = pad_batch(features)
    return batch["pixel_values"], batch["labels"]


def on_cpu(model, anchor: Anchor):
    """The model as the arm runs it: forward in bf16 autocast with fp32 outputs, NHWC where asked."""
    import torch
    from torch import nn

    class OnCpu(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.to(memory_format=torch.channels_last) if anchor.channels_last else model

        def forward(self, image):
            if anchor.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=anchor.bf16):
                out = self.model(image)
            return {k: v.float() for k, v in out.items()}

    return OnCpu()


def run_reference(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.data import DataLoader, RandomSampler
    from transformers import get_scheduler

    from tunesmith.models.torchvision_segmentation import create_segmentation_model
    from tunesmith.tasks._segmentation import PairTransform, SegmentationDataset

    sys.path.insert(0, str(args.reference))
    reference = importlib.import_module("train")
    anchor = REFERENCE_ARMS[args.arm]
    train_rows, val_rows, reader = nuclei_rows(args)
    torch.manual_seed(SEED)  # what tunesmith's set_seed does for torch before it builds the model
    model, spec = create_segmentation_model(SOURCE, len(CLASSES), None, HEAD)
    model = on_cpu(model, anchor)
    transform = PairTransform(spec["mean"], spec["std"], "light", hflip=True, vflip=True)
    train = SegmentationDataset(train_rows.inputs["image"], train_rows.labels, reader, transform, SEED)
    sampler = RandomSampler(train, generator=torch.Generator().manual_seed(SEED))  # the reference's, seeded
    loader = DataLoader(train, batch_size=BATCH, sampler=sampler, num_workers=anchor.workers,
                        collate_fn=images_and_targets, drop_last=True)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
                                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                                  lr=LR, fused=True)
    total = len(loader) * args.epochs
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(WARMUP_RATIO * total), num_training_steps=total)
    epochs = []
    begin = cpu_probe()
    for epoch in range(args.epochs):
        train.set_epoch(epoch)  # tunesmith's loop does this: the augmentation is keyed on the epoch
        start = time.perf_counter()
        reference.train_one_epoch(model, reference.criterion, optimizer, loader, scheduler, torch.device("cpu"),
                                  epoch, 10)
        epochs.append(round(time.perf_counter() - start, 3))
    end = cpu_probe()
    return {"epoch_seconds": epochs, "train_seconds": sum(epochs), **validation_scores(model, val_rows, reader, spec),
            **load_between(begin, end)}


def validation_scores(model, rows, reader, spec: dict) -> dict:
    """mIoU, Dice and pixel accuracy on whole images, batched and scored as tunesmith's evaluation does."""
    import torch
    from torch.utils.data import DataLoader

    from tunesmith.report.segmentation_metrics import segmentation_metrics
    from tunesmith.tasks._segmentation import PairTransform, SegmentationDataset, class_maps, pad_batch

    data = SegmentationDataset(rows.inputs["image"], rows.labels, reader, PairTransform(spec["mean"], spec["std"]))
    predicted = []
    model.eval()
    with torch.inference_mode():
        for batch in DataLoader(data, batch_size=EVAL_BATCH, collate_fn=pad_batch):
            predicted += class_maps(model(batch["pixel_values"])["out"], batch["sizes"])
    scores = segmentation_metrics([reader.read(ref) for ref in rows.labels], predicted, CLASSES)
    return {k: scores[k] for k in ("miou", "dice", "pixel_accuracy")}


SAME_SETTINGS = {"tunesmith": "reference-bf16-w1", "tunesmith-fp32": "reference-fp32-w1"}  # what tunesmith runs here


def median_run(runs: list[dict]) -> dict:
    """The round whose last-epoch throughput is the median (the lower one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["images_per_second"])
    return {**ordered[(len(ordered) - 1) // 2], "all_images_per_second": [r["images_per_second"] for r in runs]}


def table(rounds: list[dict[str, dict]], args: argparse.Namespace) -> str:
    runs = {arm: median_run([r[arm] for r in rounds]) for arm in rounds[0]}
    lines = [f"{args.max_train} training images, {args.epochs} epochs of {steps_per_epoch(args)} steps of {BATCH}, "
             f"the last timed; {args.max_eval} validation images, whole; median of {len(rounds)} round(s)\n",
             "| | images/s, last epoch (each round) | first / last epoch s | val mIoU | val Dice | peak RSS "
             "(largest child) | other processes' share of its cores |", "|---|---|---|---|---|---|---|"]
    for arm, r in runs.items():
        each = ", ".join(f"{x:.2f}" for x in r["all_images_per_second"])
        lines.append(f"| {arm} | {r['images_per_second']:.2f} ({each}) | {r['epoch_seconds'][0]:.1f} / "
                     f"{r['epoch_seconds'][-1]:.1f} | {r['miou']:.4f} | {r['dice']:.4f} | {r['peak_rss_mib']} MiB "
                     f"({r['peak_rss_children_mib']} MiB) | {r['other_processes_share_of_its_cores']:.0%} |")
    anchors = [a for a in runs if a in REFERENCE_ARMS]
    best = max(anchors, key=lambda a: runs[a]["images_per_second"], default=None)
    for arm in (a for a in runs if a in TUNESMITH_ARMS):
        for other in dict.fromkeys(x for x in (best, SAME_SETTINGS[arm]) if x in runs):
            a, b = runs[arm], runs[other]
            lines.append(f"| **{arm} / {other}** | **{a['images_per_second'] / b['images_per_second']:.2f}x** | | "
                         f"{a['miou'] - b['miou']:+.4f} | {a['dice'] - b['dice']:+.4f} | "
                         f"{a['peak_rss_mib'] / b['peak_rss_mib']:.2f}x | |")
    said = next((r["precision_log"] for r in runs.values() if r.get("precision_log")), None)
    if said:
        lines.append(f"\ntunesmith's log: {'; '.join(said)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, help="pytorch/vision's references/segmentation folder")
    parser.add_argument("--max-train", type=int, default=160, help="training images, a seeded sample (all: 160); "
                        "a multiple of 8")
    parser.add_argument("--max-eval", type=int, default=40, help="validation images, a seeded sample (all: 40)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs; the last one is timed (default %(default)s)")
    parser.add_argument("--arms", default=DEFAULT_ARMS,
                        help=f"comma-separated, run in this order, or all (default %(default)s; all: {','.join(ARMS)})")
    parser.add_argument("--rounds", type=int, default=1, help="run the arms this many times, alternating; the table "
                        "shows each arm's median round (on a shared machine one round is noise)")
    parser.add_argument("--table-only", action="store_true", help="print the table of the last run's raw numbers again")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.max_train % BATCH or args.max_train <= 0:
        sys.exit(f"--max-train {args.max_train}: give a multiple of {BATCH} (both loops then see whole batches only)")
    if args.arm:
        start = time.perf_counter()
        result = (run_tunesmith if args.arm in TUNESMITH_ARMS else run_reference)(args)
        import torch

        result.update(arm=args.arm, images_per_second=args.max_train / result["epoch_seconds"][-1],
                      wall_seconds=round(time.perf_counter() - start, 1), torch_threads=torch.get_num_threads(),
                      peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      peak_rss_children_mib=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))
        print(json.dumps(result))
        return
    arms = ARMS if args.arms == "all" else tuple(a.strip() for a in args.arms.split(","))
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        sys.exit(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    needs_reference = not args.table_only and any(a in REFERENCE_ARMS for a in arms)
    if needs_reference and not (args.reference and (args.reference / "train.py").is_file()):
        sys.exit(f"--reference {args.reference}: give pytorch/vision's references/segmentation folder (with train.py "
                 "and utils.py); see this script's --help for how to export it")
    if not TRAIN_JSON.is_file():
        sys.exit(f"nuclei_dsb2018 not found at {DATA} (../shared/data beside the repository)")
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = "" if (args.max_train, args.max_eval, args.epochs) == (160, 40, 2) else \
        f"-{args.max_train}x{args.epochs}-{args.max_eval}"
    out_file = OUT / f"nuclei_vs_torchvision_reference{suffix}.json"
    if args.table_only:
        rounds = json.loads(out_file.read_text())["rounds"]
    else:
        rounds = []
        for i in range(args.rounds):  # each round's file is kept as it fills, in case a later arm fails
            rounds.append(run_arms(__file__, out_file.with_suffix(f".round{i + 1}.json"), arms))
            out_file.write_text(json.dumps({"rounds": rounds}, indent=2) + "\n")
    print(table(rounds, args))


if __name__ == "__main__":
    main()
