"""The `tunesmith` command line: a thin typer layer over `tunesmith.run`.

Errors a user can fix (`TunesmithError`) print one message and exit with code 2, no traceback.
Tables and log lines go through `tunesmith._terminal`, which keeps them readable at 80 columns and
unwrapped when the output is not a terminal; help lists flags without a `<bool>` type.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from tunesmith._cli_tables import print_before_after, print_compare, print_confusion, print_metrics, print_per_class, print_self_training
from tunesmith._terminal import console, err_console, print_table, setup_output
from tunesmith.errors import TunesmithError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Fine-tune pre-trained models on your own data.")
SetOption = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config key: key=value (repeatable).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; one log line per evaluation.")]


def _setup_logging(quiet: bool) -> None:
    setup_output(quiet)


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
    print_before_after(result)
    if result.self_training:
        print_self_training(result)


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
    rows = ", ".join(f"{facts[split]['rows']} {name} rows" for split, name in (("train", "training"), ("validation", "validation"))
                     if split in facts)
    labels = f", labels {', '.join(task.label_names)}" if task.label_names else ""
    console.print(f"config OK: {rows}{labels}")


@app.command()
@_user_errors
def evaluate(model: Annotated[str, typer.Argument(help="Model folder, run directory or hub id: fine-tuned, or "
                                                       "pre-trained (scored with an untrained head: the baseline).")],
             data: Annotated[Path, typer.Option("--data", "-d", help="Labelled CSV/TSV/JSONL/Parquet file (images: "
                                                                      "or a folder of class folders).")],
             set_: SetOption = None,
             output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the metrics to this "
                                                                                 ".json file.")] = None,
             by: Annotated[str | None, typer.Option("--by", help="A column of --data: also score each of its "
                                                                 "values (e.g. --by domain).")] = None) -> None:
    """Score a model on a labelled file, overall and (with --by) per group."""
    from tunesmith.run import evaluate as run_evaluate

    _setup_logging(True)
    metrics = run_evaluate(model, str(data), set_, output=output, by=by)
    shown = _task_schema(model, set_).shown(metrics, extra=("top5_accuracy",))
    print_metrics(f"{model} on {data}", {"all rows": metrics, **(metrics.get("by", {}).get(by) or {})}, shown)
    if "per_class" in metrics:  # classification tasks
        print_per_class(metrics)
        print_confusion(metrics)
    if metrics.get("head") == "untrained":
        console.print(f"note: {model} has no trained head for these labels; these are the scores of the pre-trained "
                      "model with an untrained head (the baseline fine-tuning starts from)", highlight=False)
    if output is not None:
        console.print(f"metrics written to {output}", soft_wrap=True)


@app.command()
@_user_errors
def predict(model: Annotated[str, typer.Argument(help="Fine-tuned model folder, run directory or hub id.")],
            data: Annotated[Path, typer.Option("--data", "-d", help="CSV/TSV/JSONL/Parquet with the text column, "
                                                                     "or (images) a folder of images.")],
            output: Annotated[Path, typer.Option("--output", "-o", help="Where to write predictions (.csv, .jsonl, .parquet; .npy: embeddings alone).")],
            set_: SetOption = None) -> None:
    """Predict labels and per-label probabilities for every row of a file (or every image of a folder),
    written beside the row's line and input columns."""
    from tunesmith.run import predict as run_predict

    _setup_logging(True)
    path = run_predict(model, str(data), str(output), set_)
    console.print(f"predictions written to {path}")


@app.command()
@_user_errors
def adapt(model: Annotated[str, typer.Argument(help="Trained model folder or run directory (with BatchNorm layers).")],
          data: Annotated[Path, typer.Option("--data", "-d", help="Unlabelled target rows: a folder of images, or a file.")],
          output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the adapted model to.")],
          method: Annotated[str, typer.Option(help="batchnorm (re-estimate the statistics) or tent (then entropy "
                                                   "minimisation on the BatchNorm scales and shifts).")] = "batchnorm",
          evaluate: Annotated[Path | None, typer.Option("--evaluate", help="Labelled target file: score the source and "
                                                                          "the adapted model on it.")] = None,
          epochs: Annotated[int, typer.Option(help="tent: passes over the target rows.", min=1)] = 1,
          learning_rate: Annotated[float, typer.Option(help="tent: Adam's learning rate.", min=0)] = 1e-3,
          set_: SetOption = None) -> None:
    """Adapt a trained model to shifted conditions (fog, night, another scanner) from unlabelled target rows."""
    from tunesmith.adaptation import adapt as run_adapt

    _setup_logging(True)
    result = run_adapt(model, str(data), output, method, str(evaluate) if evaluate else None, set_, epochs, learning_rate)
    console.print(f"{result.method}: {result.batchnorm_layers} BatchNorm layers adapted on {result.target_rows} "
                  f"target rows; written to {result.output}", soft_wrap=True)
    if result.stopped:
        console.print(f"[yellow]{result.stopped}[/]", highlight=False)
    if result.before is not None and result.after is not None:
        shown = _task_schema(model, set_).shown(result.after)
        print_metrics(f"on {evaluate}", {"source": result.before, "adapted": result.after}, shown)


@app.command()
@_user_errors
def export(model: Annotated[str, typer.Argument(help="Fine-tuned model folder or run directory.")],
           data: Annotated[Path, typer.Option("--data", "-d", help="Real inputs to check the export on (images: a folder).")],
           output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the .onnx file.")],
           set_: SetOption = None) -> None:
    """Export to ONNX and check its outputs against PyTorch on real inputs."""
    from tunesmith.run import export_onnx

    _setup_logging(True)
    report = export_onnx(model, str(data), str(output), set_)
    console.print(f"{report['path']}: max abs difference to PyTorch {report['max_abs_diff']:.2e} on {report['rows']} rows, "
                  f"top-1 agreement {report['top1_agreement']:.4f}")


@app.command()
@_user_errors
def merge(run: Annotated[Path, typer.Argument(help="Run directory trained with lora.enabled.")],
          set_: SetOption = None) -> None:
    """Merge a LoRA run's adapter into the weights (best/merged/), checked on validation rows."""
    from tunesmith.run import merge as merge_run

    _setup_logging(True)
    check = merge_run(run, set_)
    console.print(f"{run / 'best' / 'merged'}: max abs difference to the adapter model {check['max_abs_diff']:.2e} "
                  f"on {check['rows']} rows")


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
    cells = [[row["group"], " ".join(str(e + 1) if on else "." for e, on in enumerate(row["trains_in_epoch"])),
              f"{row['parameters']:,}", f"{row['learning_rate']:.2e}"] for row in rows]
    print_table("layer groups (input to output)", ["group", "trains in epoch", "parameters", "learning rate"], cells,
                left=2)
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
    print_before_after(result)
    console.print(f"\nTry it:  tunesmith predict {result.run_dir} --data your.csv --output predictions.csv")


@app.command()
@_user_errors
def compare(config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
            fractions: Annotated[str | None, typer.Option(help="Learning curve: fractions of the training rows, "
                                                                "e.g. 0.05,0.1,0.25,0.5,1.0.")] = None,
            seeds: Annotated[int | None, typer.Option(help="Learning curve: repeats of every point.")] = None,
            arm_seeds: Annotated[int | None, typer.Option(help="Training seeds of every trained arm (mean ± std, "
                                                               "training curve band).")] = None,
            arms: Annotated[str | None, typer.Option(help="Rows: pretrained,probe,finetune,scratch,"
                                                          "probe_then_finetune.")] = None,
            set_: SetOption = None,
            overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier comparison.")] = False,
            quiet: QuietOption = False) -> None:
    """Show what fine-tuning bought: pre-trained as is, probe, fine-tune, from scratch; optionally a learning curve."""
    from tunesmith.comparison import compare as run_compare

    _setup_logging(quiet)
    overrides = list(set_ or []) + (["overwrite_output_dir=true"] if overwrite else [])
    overrides += [f"compare.{key}=[{value}]" for key, value in (("fractions", fractions), ("arms", arms)) if value]
    overrides += [f"compare.seeds={seeds}"] if seeds is not None else []
    print_compare(run_compare(config, overrides, quiet=quiet, arm_seeds=arm_seeds))


UPDATE_ARMS = "update,replay,l2sp,wise,retrain,scratch"  # comparison/update.py ARMS, not imported at startup


@app.command()
@_user_errors
def update(run: Annotated[Path, typer.Argument(help="The run directory to update (its config and best/).")],
           data: Annotated[Path, typer.Option("--data", "-d", help="The new period's rows.")],
           output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where the arms and the table go.")],
           validation: Annotated[Path | None, typer.Option(help="The new period's validation rows "
                                                              "(default: a held-out share of --data).")] = None,
           old_validation: Annotated[Path | None, typer.Option(help="The old period's validation rows "
                                                                  "(default: the run's data.validation).")] = None,
           arms: Annotated[str, typer.Option(help="Arms besides the stale run: update (always), the guards replay, "
                                                  "l2sp, wise, and retrain (old + new rows), scratch.")] = UPDATE_ARMS,
           replay_share: Annotated[float, typer.Option(help="Replayed old rows per new training row.")] = 0.25,
           l2_sp: Annotated[float, typer.Option("--l2-sp", help="strategy.l2_sp of the l2sp arm.")] = 10.0,
           set_: SetOption = None,
           overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier update there.")] = False,
           quiet: QuietOption = False) -> None:
    """Fine-tune a trained run on newer data; compare stale, updated, guarded and retrained models on both periods."""
    from tunesmith.comparison.update import update as run_update
    from tunesmith.comparison.update_summary import table_rows

    _setup_logging(quiet)
    result = run_update(run, data, output_dir, str(validation) if validation else None,
                        str(old_validation) if old_validation else None, tuple(a for a in arms.split(",") if a),
                        replay_share, l2_sp, list(set_ or []), overwrite, quiet)
    headers, rows = table_rows(result)
    print_table(f"update of {run} ({result.metric} on each period's validation rows)", headers, rows)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"updated model: {result.best_model_dir}; table: {result.folder / 'summary.md'}", highlight=False)


@app.command()
@_user_errors
def tune(config: Annotated[Path, typer.Argument(help="Run config (YAML) with a search section.")],
         n_trials: Annotated[int | None, typer.Option("--n-trials", help="Trials the study should hold.")] = None,
         timeout_minutes: Annotated[float | None, typer.Option("--timeout-minutes",
                                                               help="Start no new trial after this long.")] = None,
         set_: SetOption = None, quiet: QuietOption = False) -> None:
    """Search learning rate, epochs and the other keys in search.space with Optuna; write the best config."""
    from tunesmith.tuning import tune as run_tune
    from tunesmith.tuning.results import table_cells

    _setup_logging(quiet)
    overrides = list(set_ or []) + [f"search.{key}={value}" for key, value in
                                    (("n_trials", n_trials), ("timeout_minutes", timeout_minutes)) if value is not None]
    result = run_tune(config, overrides, quiet=quiet)
    headers, rows = table_cells(result.trials, result.metric, result.best)
    print_table(f"study {result.study_name} ({result.storage})", headers, rows, left=0)
    console.print(f"results: {result.results_file}", soft_wrap=True)
    if result.best is None:
        console.print("no trial has finished yet, so there is no best config")
        return
    console.print(f"best: trial {result.best.number}, validation {result.metric} {result.best.value:.4f}; "
                  f"model in {result.best_model_dir}", soft_wrap=True)
    console.print(f"train with these settings: tunesmith train {result.best_config}", soft_wrap=True)


@app.command("lr-find")
@_user_errors
def lr_find(config: Annotated[Path, typer.Argument(help="Run config (YAML).")],
            steps: Annotated[int, typer.Option(help="Optimizer steps from --start-lr to --end-lr.")] = 100,
            start_lr: Annotated[float, typer.Option(help="First head learning rate.")] = 1e-7,
            end_lr: Annotated[float, typer.Option(help="Last head learning rate.")] = 1.0,
            output: Annotated[Path | None, typer.Option(help="Folder for lr_find.png and lr_find.json "
                                                             "(default <output_dir>/lr_find).")] = None,
            set_: SetOption = None) -> None:
    """Learning-rate range test: raise the rate step by step on a throwaway model and suggest one."""
    from tunesmith.tuning import lr_find as run_lr_find

    _setup_logging(True)
    result = run_lr_find(config, set_, steps=steps, start_lr=start_lr, end_lr=end_lr, output=output)
    if result.suggested_lr is not None:
        print_table("implied learning rate per layer group (input to output)", ["group", "learning rate"],
                    [[name, "frozen" if rate is None else f"{rate:.2e}"] for name, rate in result.group_rates.items()])
    steepest = f"{result.suggested_lr:.1e}" if result.suggested_lr else "none"
    at_min = f"{result.min_loss_lr:.1e}" if result.min_loss_lr else "none"
    console.print(f"suggested learning rate (steepest fall of the loss): {steepest}; minimum / 10: {at_min}; "
                  f"{len(result.losses)} steps, {result.stopped}")
    for note in result.warnings:
        console.print(f"[yellow]less reliable:[/] {note}", highlight=False)
    console.print(f"plot: {result.plot}", soft_wrap=True)


def catalogue() -> None:
    """List the tasks (with their config section and metrics) and the demo: model sources."""
    from tunesmith.config import task_schemas
    from tunesmith.models.demos import demos

    print_table("tasks (task: ...)", ["task", "own section", "metrics (first selects the best model)", "what"],
                [[t.name, t.section if t.settings else "-", ", ".join(t.selectable), t.summary]
                 for t in task_schemas().values()], left=4)
    print_table("demo sources (model.source: demo:...), shipped by packages, offline",
                ["source", "modality", "tasks", "a copy of", "what"],
                [[f"demo:{d.name}", d.modality, ", ".join(d.tasks), d.base_model, d.summary] for d in demos().values()],
                left=5)
    console.print("Any hub id or local folder works too (bert-base-uncased, resnet50.a1_in1k, ./my-model).")


app.command("tasks")(catalogue)
app.command("models")(catalogue)


@app.command("config-reference")
def config_reference() -> None:
    """Print every config key with its default and meaning (Markdown)."""
    from tunesmith.config import reference_markdown

    print(reference_markdown())


def _task_schema(model: str, overrides: list[str] | None):
    """The registry's view of the task a model was trained for (its metrics, in order)."""
    from tunesmith.config import load_config
    from tunesmith.run import _saved_task

    return load_config({"task": _saved_task(model)}, [o for o in overrides or [] if o.startswith("task=")]).task_schema


def main() -> None:
    app()


if __name__ == "__main__":
    main()
