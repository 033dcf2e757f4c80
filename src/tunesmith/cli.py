"""The `tunesmith` command line: a thin typer layer over `tunesmith.run`.

Errors a user can fix (`TunesmithError`) print one message and exit with code 2, no traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from tunesmith.errors import TunesmithError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune pre-trained models on your own data.")
console = Console()
err_console = Console(stderr=True)

SetOption = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config key: key=value (repeatable).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; one log line per evaluation.")]


def _setup_logging(quiet: bool) -> None:
    handler = RichHandler(console=err_console, show_time=not quiet, show_path=False, markup=False)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[handler], force=True)
    for noisy in ("accelerate", "transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _user_errors(fn: Callable) -> Callable:
    """Turns TunesmithError into a one-paragraph message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunesmithError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@_user_errors
def train(config: Annotated[Path, typer.Argument(help="Run config (YAML).")], set_: SetOption = None,
          overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier run in output_dir.")] = False,
          resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest intact checkpoint.")] = False,
          resume_from: Annotated[str | None, typer.Option("--resume-from", help="Continue from this checkpoint (step-N or a path).")] = None,
          quiet: QuietOption = False) -> None:
    """Fine-tune a pre-trained model as the config says."""
    from tunesmith.run import finetune

    _setup_logging(quiet)
    overrides = list(set_ or []) + (["overwrite_output_dir=true"] if overwrite else [])
    if resume or resume_from:
        overrides.append(f"resume={resume_from or 'auto'}")
    result = finetune(config, overrides, quiet=quiet)
    _print_before_after(result)


@app.command()
@_user_errors
def validate(config: Annotated[Path, typer.Argument(help="Run config (YAML).")], set_: SetOption = None) -> None:
    """Check a config and its data files without loading a model."""
    from tunesmith.config import load_config
    from tunesmith.tasks import get_task

    _setup_logging(True)
    cfg = load_config(config, set_)
    task = get_task(cfg)
    task.preflight()
    facts = task.describe()
    console.print(f"config OK: {facts['train']['rows']} training rows, {facts['validation']['rows']} validation rows, "
                  f"labels {', '.join(facts['labels'])}")


@app.command()
@_user_errors
def evaluate(model: Annotated[str, typer.Argument(help="Fine-tuned model folder, run directory or hub id.")],
             data: Annotated[Path, typer.Option("--data", "-d", help="Labelled CSV/TSV/JSONL/Parquet file.")],
             set_: SetOption = None) -> None:
    """Score a fine-tuned model on a labelled file."""
    from tunesmith.run import evaluate as run_evaluate

    _setup_logging(True)
    metrics = run_evaluate(model, str(data), set_)
    table = Table(title=f"{model} on {data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("accuracy", "macro_f1", "loss"):
        table.add_row(key, f"{metrics[key]:.4f}")
    console.print(table)
    _print_per_class(metrics)


@app.command()
@_user_errors
def predict(model: Annotated[str, typer.Argument(help="Fine-tuned model folder, run directory or hub id.")],
            data: Annotated[Path, typer.Option("--data", "-d", help="CSV/TSV/JSONL/Parquet with the text column.")],
            output: Annotated[Path, typer.Option("--output", "-o", help="Where to write predictions (.csv or .jsonl).")],
            set_: SetOption = None) -> None:
    """Predict labels and per-label probabilities for every row of a file."""
    from tunesmith.run import predict as run_predict

    _setup_logging(True)
    path = run_predict(model, str(data), str(output), set_)
    console.print(f"predictions written to {path}")


@app.command()
@_user_errors
def inspect(config: Annotated[Path | None, typer.Argument(help="Run config (YAML); omit to use --model.")] = None,
            model: Annotated[str | None, typer.Option("--model", "-m", help="Model source, e.g. demo:minilm.")] = None,
            set_: SetOption = None) -> None:
    """Show layer groups, parameter counts, learning rates and what trains in each epoch."""
    from tunesmith.run import inspect as run_inspect

    _setup_logging(True)
    overrides = list(set_ or []) + ([f"model.source={model}"] if model else [])
    rows = run_inspect(config, overrides)
    table = Table(title="layer groups (input to output)")
    for col, justify in (("group", "left"), ("parameters", "right"), ("learning rate", "right"), ("trains in epoch", "left")):
        table.add_column(col, justify=justify)
    for row in rows:
        epochs = " ".join(str(e + 1) if on else "." for e, on in enumerate(row["trains_in_epoch"]))
        table.add_row(row["group"], f"{row['parameters']:,}", f"{row['learning_rate']:.2e}", epochs)
    console.print(table)
    total = sum(r["parameters"] for r in rows)
    first = sum(r["parameters"] for r in rows if r["trains_in_epoch"][0])
    console.print(f"{total:,} parameters; {first:,} train in epoch 1")


@app.command()
@_user_errors
def quickstart(output_dir: Annotated[Path, typer.Option(help="Where the run goes.")] = Path("runs/quickstart"),
               quiet: QuietOption = False) -> None:
    """Fine-tune the real all-MiniLM-L6-v2 on 600 product reviews, offline, in a few minutes on a CPU."""
    from tunesmith.quickstart import quickstart_config
    from tunesmith.run import finetune

    _setup_logging(quiet)
    console.print("tunesmith quickstart: fine-tuning all-MiniLM-L6-v2 (demo:minilm) on 600 product reviews "
                  "(480 train / 120 validation), offline, on this machine")
    result = finetune(quickstart_config(str(output_dir)), quiet=quiet)
    _print_before_after(result)
    console.print(f"\nTry it:  tunesmith predict {result.run_dir} --data your.csv --output predictions.csv")


@app.command("config-reference")
def config_reference() -> None:
    """Print every config key with its default and meaning (Markdown)."""
    from tunesmith.config import reference_markdown

    print(reference_markdown())


def _print_before_after(result) -> None:
    table = Table(title=f"validation results ({result.run_dir})")
    for col in ("metric", "pre-trained", "fine-tuned", "change"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for key in ("accuracy", "macro_f1", "loss"):
        before, after = result.baseline[key], result.final[key]
        table.add_row(key, f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}")
    console.print(table)
    console.print(f"best model: {result.best_model_dir} (step {result.best_step})"
                  f"{', stopped early' if result.stopped_early else ''}; "
                  f"{result.samples_per_second:.1f} training samples/s")


def _print_per_class(metrics: dict) -> None:
    table = Table(title="per class")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for name, v in metrics["per_class"].items():
        table.add_row(name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
