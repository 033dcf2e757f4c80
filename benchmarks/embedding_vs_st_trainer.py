"""SQuAD question -> paragraph retrieval with demo:minilm: tunesmith's `embedding` task against
sentence-transformers' own `SentenceTransformerTrainer`, at its defaults and at its best.

Run by hand (not a test), from the repository root, with ../shared/data/squad_dev_small beside the repo
(the anchor needs `datasets`: `.venv/bin/pip install datasets`):

    .venv/bin/python benchmarks/embedding_vs_st_trainer.py                    # all arms, once each
    .venv/bin/python benchmarks/embedding_vs_st_trainer.py --train-rows 600   # quick smoke check

Arms: tunesmith in fp32 (`mixed_precision: no`) and with `mixed_precision: auto` (bf16 autocast on a CPU
with AMX / AVX512-BF16); SentenceTransformerTrainer with MultipleNegativesRankingLoss at its defaults
(random batches, fp32) and at its best on such a CPU (`batch_sampler=NO_DUPLICATES`, the sampler its
docs recommend for in-batch negatives, and `bf16=True`); and, for quality only, tunesmith's linear probe
of the frozen encoder (`embedding.projection: true`, `strategy.freeze: head_only`, lr 1e-3). Same weights, pairs (train.jsonl questions and
their paragraphs), batch 32, one epoch, lr 5e-5 with a linear schedule and 10% warm-up, weight decay
0.01, max 256 tokens, scale 20, seed 42. Each arm runs in its own subprocess, so its peak RSS is its
own. Throughput is training pairs / seconds of the training loop only (tunesmith's in-loop evaluation
and checkpoint writes are timed and subtracted). Quality is measured the same way for every arm after
training: the saved model loaded with plain `SentenceTransformer`, fp32 `encode`, each dev question
searching the 993 dev questions' distinct paragraphs (other articles than training's).
Writes benchmarks/out/embedding_vs_st_trainer.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _arms import cpu_probe, in_loop_seconds, load_between, run_arms, time_loop_extras  # noqa: E402

OUT = REPO / "benchmarks" / "out"
SQUAD = REPO.parent / "shared" / "data" / "squad_dev_small"
BATCH, LR, MAX_LENGTH, SEED = 32, 5e-5, 256, 42
ARMS = {
    "tunesmith": "tunesmith, fp32",
    "tunesmith-auto": "tunesmith, mixed_precision auto",
    "st": "SentenceTransformerTrainer, defaults (random batches, fp32)",
    "st-best": "SentenceTransformerTrainer, NO_DUPLICATES + bf16",
    "tunesmith-probe": "tunesmith, linear probe (projection, freeze head_only, lr 1e-3, auto)",
}


def pairs(path: Path, limit: int | None) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    return [r["question"] for r in rows], [r["context"] for r in rows]


def retrieval(folder: Path) -> dict[str, float]:
    """The saved model, as a user loads it, on the dev questions and their distinct paragraphs."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from tunesmith.report.ranking_metrics import retrieval_metrics

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    model.max_seq_length = MAX_LENGTH
    questions, contexts = pairs(SQUAD / "dev.jsonl", None)
    corpus = list(dict.fromkeys(contexts))
    q = model.encode(questions, batch_size=64, normalize_embeddings=True)
    d = model.encode(corpus, batch_size=64, normalize_embeddings=True)
    index = {c: i for i, c in enumerate(corpus)}
    scores = retrieval_metrics(q @ d.T, np.array([index[c] for c in contexts]))
    return {k: round(v, 4) for k, v in scores.items()}


def run_tunesmith(args: argparse.Namespace, out_dir: Path) -> dict:
    import tunesmith

    probe = args.arm == "tunesmith-probe"
    train_file = out_dir / "train.jsonl"
    questions, contexts = pairs(SQUAD / "train.jsonl", args.train_rows)
    train_file.write_text("".join(json.dumps({"question": q, "context": c}) + "\n" for q, c in zip(questions, contexts)))
    spent = time_loop_extras()
    raw = {"task": "embedding", "output_dir": str(out_dir / "run"), "model": {"source": "demo:minilm"},
           # the in-loop validation reads 300 dev pairs (its time is subtracted); `retrieval` scores all of them
           "data": {"train": str(train_file), "validation": str(SQUAD / "dev.jsonl"), "max_length": MAX_LENGTH,
                    "max_eval_samples": 300},
           "embedding": {"anchor_column": "question", "positive_column": "context", "projection": probe},
           "training": {"num_train_epochs": 1, "learning_rate": 1e-3 if probe else LR, "per_device_train_batch_size": BATCH,
                        "warmup_ratio": 0.1, "weight_decay": 0.01, "seed": SEED,
                        "mixed_precision": "no" if args.arm == "tunesmith" else "auto"},
           "strategy": {"freeze": "head_only" if probe else "none", "layer_lr_decay": 1.0}}
    begin = cpu_probe()
    result = tunesmith.finetune(raw, quiet=True)
    load = load_between(begin, cpu_probe())
    extras = in_loop_seconds(spent)
    loop = result.train_seconds - extras
    return {"rows": len(questions), "loop_seconds": round(loop, 1), "in_loop_eval_and_save_seconds": round(extras, 1),
            "pairs_per_second": round(len(questions) / loop, 1), "in_loop_ndcg_at_10": round(result.final["ndcg_at_10"], 4),
            "baseline_ndcg_at_10": round(result.baseline["ndcg_at_10"], 4),
            **load, "retrieval": retrieval(result.best_model_dir)}


def run_st(args: argparse.Namespace, out_dir: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from tunesmith.models.sources import resolve_source

    best = args.arm == "st-best"
    questions, contexts = pairs(SQUAD / "train.jsonl", args.train_rows)
    model = SentenceTransformer(resolve_source("demo:minilm").location, device="cpu", local_files_only=True)
    model.max_seq_length = MAX_LENGTH
    training = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir / "st"), num_train_epochs=1, per_device_train_batch_size=BATCH, learning_rate=LR,
        warmup_ratio=0.1, weight_decay=0.01, lr_scheduler_type="linear", seed=SEED, bf16=best, use_cpu=True,
        batch_sampler=BatchSamplers.NO_DUPLICATES if best else BatchSamplers.BATCH_SAMPLER,
        save_strategy="no", eval_strategy="no", report_to="none", logging_steps=10, dataloader_num_workers=0,
        disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=training, loss=MultipleNegativesRankingLoss(model, scale=20.0),
                                         train_dataset=Dataset.from_dict({"anchor": questions, "positive": contexts}))
    begin = cpu_probe()
    start = time.perf_counter()
    trainer.train()
    loop = time.perf_counter() - start
    load = load_between(begin, cpu_probe())
    model.save(str(out_dir / "best"))
    return {"rows": len(questions), "loop_seconds": round(loop, 1), "pairs_per_second": round(len(questions) / loop, 1),
            **load, "retrieval": retrieval(out_dir / "best")}


def child(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        numbers = (run_tunesmith if args.arm.startswith("tunesmith") else run_st)(args, Path(tmp))
    numbers["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    print(json.dumps(numbers))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arm", choices=list(ARMS))
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--train-rows", type=int, default=None)
    args = parser.parse_args()
    if args.arm:
        return child(args)
    OUT.mkdir(exist_ok=True)
    sys.argv = [a for a in sys.argv if a not in ("--arms", *ARMS)]  # children get --train-rows only
    runs = run_arms(__file__, OUT / "embedding_vs_st_trainer.json", tuple(args.arms))
    anchors = [a for a in runs if a.startswith("st")]
    fastest = max(anchors, key=lambda a: runs[a]["pairs_per_second"]) if anchors else None
    from tunesmith.models.sources import resolve_source

    start = retrieval(Path(resolve_source("demo:minilm").location))
    print(f"\n{platform.processor() or platform.machine()}, SQuAD pairs, demo:minilm, batch {BATCH}, one epoch; "
          f"pre-trained: nDCG@10 {start['ndcg_at_10']}, recall@1 {start['recall_at_1']}, recall@10 {start['recall_at_10']}\n")
    print("| arm | pairs/s | vs best anchor | peak RSS MiB | dev nDCG@10 | recall@1 | recall@10 |")
    print("|---|---|---|---|---|---|---|")
    for arm, r in runs.items():
        ratio = f"{r['pairs_per_second'] / runs[fastest]['pairs_per_second']:.2f}x" if fastest else ""
        m = r["retrieval"]
        print(f"| {ARMS[arm]} | {r['pairs_per_second']} | {ratio} | {r['peak_rss_mib']:.0f} | {m['ndcg_at_10']} | "
              f"{m['recall_at_1']} | {m['recall_at_10']} |")


if __name__ == "__main__":
    main()
