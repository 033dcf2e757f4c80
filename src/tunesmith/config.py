"""The run config: one typed schema, loaded from YAML plus `--set key=value` overrides.

`RunConfig` is the single source of truth for every setting. The field docstrings are the help
text (`tunesmith config-reference` prints them), names follow Hugging Face `TrainingArguments`
where one exists, and unknown keys are rejected with the nearest valid key. All problems in a
file are reported together as one `ConfigError`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunesmith._config_reporting import CompareConfig, TrackingConfig
from tunesmith._config_augmentation import AugmentationConfig
from tunesmith._config_errors import describe_error
from tunesmith._config_llm import CausalLMConfig, LoraConfig
from tunesmith._config_qa import QuestionAnsweringConfig
from tunesmith._config_seq2seq import Seq2SeqConfig
from tunesmith._config_search import SearchConfig
from tunesmith.errors import ConfigError


# Metrics of tasks reporting more than accuracy and macro_f1; the first is their default metric_for_best_model.
TASK_METRICS = {"token-classification": ("f1", "precision", "recall", "accuracy", "macro_f1"), "causal-lm": ("loss", "exact_match"),
                "question-answering": ("f1", "exact_match"), "seq2seq": ("loss", "bleu", "rouge1", "rouge2", "rougeL")}
# Tasks whose inputs need more tokens than data.max_length's default: their default instead.
TASK_MAX_LENGTH = {"question-answering": 384}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelConfig(_Section):
    source: str = "demo:minilm"
    """Where the pre-trained weights come from: a hub id (`bert-base-uncased`), a local
    `save_pretrained` directory, or a `demo:` alias (`demo:minilm`). Images: a timm model name
    (`resnet50.a1_in1k`), a tunesmith run or `best/` folder, a weights file (`.pth`,
    `.safetensors`) with `architecture`, or `demo:efficientnet-lite0`."""
    architecture: str | None = None
    """Images: the timm architecture a local weights file is mapped onto (`efficientnet_lite0`)."""
    pretrained: bool = True
    """Load the pre-trained weights; `false` starts the same architecture from random
    initialization (the from-scratch baseline; text models keep the source's tokenizer)."""
    train_batchnorm: bool = False
    """Images: BatchNorm layers in frozen groups keep training (weights and running statistics,
    as fastai's `train_bn`); by default they stay in eval mode and do not move."""
    channels_last: Literal["auto"] | bool = "auto"
    """Images: NHWC memory format for CNNs. `auto` uses it on CUDA GPUs, where it is faster;
    on CPUs it is usually slower."""
    trust_remote_code: bool = False
    """Allow a model folder to run its own Python code. Off unless you trust the source."""
    dropout: float | None = None
    """Override every dropout probability in the model config (hidden, attention, classifier).
    `null` keeps the pre-trained model's values."""


class DataConfig(_Section):
    train: str | None = None
    """Training file: CSV, TSV, JSONL or Parquet (format from the extension). Images: also a
    folder with a subfolder per class, or with `train/` and `val/` subfolders of class folders."""
    validation: str | None = None
    """Validation file (or image folder). When absent, `validation_split` of the training rows is held out."""
    validation_split: float = 0.1
    """Fraction of training rows held out for validation (seeded and stratified by label)."""
    text_column: str = "text"
    """Column holding the input text."""
    text_pair_column: str | None = None
    """Optional second text column for sentence-pair tasks (e.g. premise/hypothesis)."""
    label_column: str = "label"
    """Column holding the label (names or integers)."""
    image_column: str = "image"
    """Images: column holding the image path in a CSV/JSONL file."""
    image_root: str | None = None
    """Images: folder that relative paths in `image_column` start from (default: the file's own folder)."""
    image_size: int | None = Field(None, gt=0)
    """Images: train and evaluate at this square size instead of the model's pretrained input size
    (CNNs only; smaller is faster, usually less accurate)."""
    max_length: int = 128
    """Longest input in tokens; longer texts are truncated (and counted in the log). For
    question-answering the default is 384, and longer contexts are read in windows instead."""
    bad_rows: Literal["skip", "error"] = "skip"
    """Rows with empty text or a missing label (images: also unreadable or truncated files):
    `skip` drops them with a count and a warning, `error` stops the run and names the rows."""
    max_train_samples: int | None = None
    """Train on a seeded random sample of N rows; handy for quick runs."""
    max_eval_samples: int | None = None
    """Validate on a seeded random sample of N rows."""
    tokens_column: str = "tokens"
    """Token classification: JSONL key of each sentence's word list (CoNLL files: the first column)."""
    tags_column: str = "tags"
    """Token classification: JSONL key of the BIO/BIOES tags, one per word (CoNLL files: the last column)."""
    label_all_subtokens: bool = False
    """Token classification: train on every sub-token of a word (B- continued as I-), not only the first."""


class TrainingConfig(_Section):
    num_train_epochs: float = 3
    """Number of passes over the training data (may be fractional)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps; overrides `num_train_epochs` when set."""
    learning_rate: float = 5e-5
    """Peak learning rate of the top layer group (the head)."""
    per_device_train_batch_size: int = 32
    """Examples per micro-batch on each device."""
    per_device_eval_batch_size: int = 64
    """Examples per evaluation batch on each device."""
    gradient_accumulation_steps: int = 1
    """Micro-batches accumulated before each optimizer step."""
    weight_decay: float = 0.01
    """AdamW weight decay; never applied to biases and normalization weights."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this value; `null` disables clipping."""
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate decay after warm-up."""
    warmup_ratio: float | None = None
    """Fraction of all optimizer steps spent warming up (default 0.1 when neither warm-up key is set)."""
    warmup_steps: int | None = None
    """Number of warm-up steps; give this or `warmup_ratio`, not both."""
    seed: int = 42
    """Seed for splits, shuffling, initialization and dropout."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """`auto` uses bf16 on GPUs that have it, fp16 on other GPUs and full precision on CPU."""
    eval_strategy: Literal["epoch", "steps"] = "epoch"
    """Evaluate at the end of every epoch, or every `eval_steps` optimizer steps."""
    eval_steps: int | None = None
    """Optimizer steps between evaluations when `eval_strategy: steps`."""
    metric_for_best_model: str = "accuracy"
    """Validation metric that selects the best checkpoint and drives early stopping:
    `accuracy`, `macro_f1` or `loss`. token-classification: entity-level `f1` (its default when
    unset), `precision`, `recall`, `macro_f1` (over entity types), `accuracy` (per word) or `loss`.
    question-answering: SQuAD `f1` (its default) or `exact_match`. seq2seq: `loss` (its default),
    `bleu`, `rouge1`, `rouge2` or `rougeL` of generated outputs. causal-lm: `loss` (its default)
    or `exact_match` of generated answers."""
    early_stopping_patience: int | None = 3
    """Stop after this many evaluations without improvement; `null` never stops early."""
    early_stopping_threshold: float = 0.0
    """Smallest change of the metric that counts as an improvement."""
    label_smoothing_factor: float = 0.0
    """Label smoothing for the cross-entropy loss (0 disables)."""
    class_weights: Literal["none", "balanced"] = "none"
    """`balanced` weights the loss by inverse class frequency, for imbalanced labels."""
    group_by_length: bool = True
    """Batch examples of similar length together so less padding is computed."""
    logging_steps: int = 10
    """Optimizer steps between progress-bar updates of the loss and learning rate."""
    save_steps: int | None = None
    """Also write a checkpoint every N optimizer steps (checkpoints are always written at each
    evaluation and when SIGTERM or Ctrl-C stops a run)."""
    save_total_limit: int = 1
    """How many step checkpoints to keep in `checkpoints/` (the best model is kept separately)."""
    activation_cache: Literal["auto", "off"] = "auto"
    """Frozen-prefix activation cache: with the first groups frozen for good and inputs that do
    not change between epochs, record the frozen part's outputs in one epoch and run only the
    trainable top afterwards (same numbers, less compute). `auto` uses it where it is safe."""
    torch_compile: bool = False
    """Compile the model's forward with `torch.compile` (inductor, dynamic shapes). The first
    steps are slower while it compiles (and again when freezing changes); on GPUs and long runs
    the later ones are faster. Turns the activation cache off."""
    activation_cache_max_gb: float = 2.0
    """Above this size the activation cache lives in a disk-backed memmap in the run directory."""
    nan_policy: Literal["stop", "skip"] = "stop"
    """When the loss or gradients become NaN/inf: `stop` (the update is not applied, the rows are
    written to bad_batches.json, the last good checkpoint kept) or `skip` the update and go on."""
    max_nan_skips: int = 10
    """Under `nan_policy: skip`, stop after this many skipped steps."""
    dataloader_num_workers: int | None = None
    """Worker processes for data loading. `null` sizes it to the data: 0 for text (pre-tokenized
    in memory), one per spare CPU core (at most 8) for images, which are decoded on the fly."""
    auto_find_batch_size: bool = False
    """GPU: halve the micro-batch until a training step fits in memory, raising accumulation to keep the effective batch."""


class StrategyConfig(_Section):
    freeze: Literal["none", "head_only"] | int = "none"
    """Which layer groups are frozen: `none`, `head_only` (train only the head), or an integer k
    (freeze the first k groups, counting from the embeddings)."""
    gradual_unfreezing: bool = False
    """ULMFiT-style: start with only the head trainable and unfreeze one more group per epoch,
    from the top down (never below the `freeze` floor)."""
    layer_lr_decay: float = 1.0
    """Discriminative learning rates: each group going down gets the learning rate of the group
    above times this factor (1.0 = one rate for all; 0.8 is a common choice)."""


class RunConfig(_Section):
    task: str = "text-classification"
    """What is being fine-tuned; one of the modules in `tunesmith/tasks/` (`text-classification`,
    `image-classification`, `token-classification`, `question-answering`, `seq2seq`, `causal-lm`)."""
    output_dir: str = "runs/run"
    """The run directory: config, metrics, checkpoints, `best/` and the model card go here."""
    overwrite_output_dir: bool = False
    """Replace an earlier run in `output_dir` (otherwise a directory holding a run is refused)."""
    resume: str | None = None
    """Continue the run in `output_dir`: `auto` (from its newest intact checkpoint, or from the
    start when there is none), or a checkpoint name (`step-300`) or path. `null` starts fresh."""
    model: ModelConfig = ModelConfig()
    """Where the pre-trained model comes from and how it is set up."""
    data: DataConfig = DataConfig()
    """The labelled files and how to read them."""
    training: TrainingConfig = TrainingConfig()
    """The optimization loop (names as in Hugging Face TrainingArguments)."""
    strategy: StrategyConfig = StrategyConfig()
    """Which layer groups train when, and at which learning rates."""
    augmentation: AugmentationConfig = AugmentationConfig()
    """Random transforms of training images, mixup and cutmix (image tasks)."""
    tracking: TrackingConfig = TrackingConfig()
    """Experiment tracking: TensorBoard and MLflow."""
    compare: CompareConfig = CompareConfig()
    """`tunesmith compare`: the arms, and the learning curve's fractions and seeds."""
    search: SearchConfig = SearchConfig()
    """`tunesmith tune`: the search space, budget, pruning and where the study is stored."""
    lora: LoraConfig = LoraConfig()
    """Parameter-efficient fine-tuning with LoRA/DoRA adapters (peft), and QLoRA."""
    causal_lm: CausalLMConfig = CausalLMConfig()
    """causal-lm: the chat/prompt-response keys, packing, and generated answers."""
    question_answering: QuestionAnsweringConfig = QuestionAnsweringConfig()
    """question-answering: the JSONL keys, context windows, and how answers are picked."""
    seq2seq: Seq2SeqConfig = Seq2SeqConfig()
    """seq2seq: the source/target columns, target length, and generation settings."""

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RunConfig:
        problems, t, d = self.search.problems(self), self.training, self.data  # search: _config_search.py
        from tunesmith.tasks import available_tasks

        if self.task not in available_tasks():
            problems.append(f"task: unknown task {self.task!r}; choose one of {', '.join(available_tasks())}")
        if t.warmup_ratio is not None and t.warmup_steps is not None:
            problems.append("training.warmup_ratio and training.warmup_steps are both set; keep one")
        if t.eval_strategy == "steps" and not t.eval_steps:
            problems.append("training.eval_strategy is 'steps' but training.eval_steps is not set")
        if not 0.0 < d.validation_split < 1.0:
            problems.append(f"data.validation_split must be between 0 and 1, got {d.validation_split}")
        metrics = TASK_METRICS.get(self.task, ("accuracy", "macro_f1")) + ("loss",)
        if "max_length" not in d.model_fields_set and self.task in TASK_MAX_LENGTH:
            d.max_length = TASK_MAX_LENGTH[self.task]
        if "metric_for_best_model" not in t.model_fields_set:
            t.metric_for_best_model = metrics[0]
        if t.metric_for_best_model not in metrics:
            problems.append(
                f"training.metric_for_best_model: unknown metric {t.metric_for_best_model!r}; "
                f"choose one of {', '.join(metrics)}"
            )
        if isinstance(self.strategy.freeze, int) and self.strategy.freeze < 0:
            problems.append("strategy.freeze must be 'none', 'head_only' or a non-negative integer")
        for key, value in [
            ("training.learning_rate", t.learning_rate),
            ("training.num_train_epochs", t.num_train_epochs),
            ("training.per_device_train_batch_size", t.per_device_train_batch_size),
            ("training.per_device_eval_batch_size", t.per_device_eval_batch_size),
            ("training.gradient_accumulation_steps", t.gradient_accumulation_steps),
            ("data.max_length", d.max_length),
            ("strategy.layer_lr_decay", self.strategy.layer_lr_decay),
        ]:
            if value <= 0:
                problems.append(f"{key} must be greater than 0, got {value}")
        if problems:
            # Raised as ValueError so pydantic merges these with any field errors.
            raise ValueError("; ".join(problems))
        return self

    @property
    def greater_is_better(self) -> bool:
        return self.training.metric_for_best_model != "loss"

    @property
    def warmup(self) -> tuple[float | None, int | None]:
        t = self.training
        if t.warmup_ratio is None and t.warmup_steps is None:
            return 0.1, None
        return t.warmup_ratio, t.warmup_steps


SECTIONS = {"model": ModelConfig, "data": DataConfig, "training": TrainingConfig, "strategy": StrategyConfig,
            "augmentation": AugmentationConfig, "tracking": TrackingConfig, "compare": CompareConfig, "search": SearchConfig,
            "lora": LoraConfig, "causal_lm": CausalLMConfig, "question_answering": QuestionAnsweringConfig,
            "seq2seq": Seq2SeqConfig}


def load_config(
    source: str | Path | dict[str, Any] | RunConfig | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Builds a validated RunConfig from a YAML file, a dict or an existing config, plus overrides.

    Args:
        source: Path to a YAML file, a nested dict, a RunConfig, or None for all defaults.
        overrides: `key=value` strings; keys are dotted (`training.learning_rate=1e-4`) or bare
            when the name is unique (`learning_rate=1e-4`). Values are parsed as YAML.

    Raises:
        ConfigError: listing every problem found, each with the key, the value and a fix.
    """
    label = None
    if isinstance(source, RunConfig):
        raw = source.model_dump()
    elif isinstance(source, dict):
        raw = copy.deepcopy(source)  # overrides must not change the caller's nested dicts
    elif source is None:
        raw = {}
    else:
        label = str(source)
        raw = _read_yaml(Path(source))
    for item in overrides or []:
        _apply_override(raw, item)
    return validate_dict(raw, label)


def validate_dict(raw: dict[str, Any], label: str | None = None) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([describe_error(err) for err in exc.errors()], label) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError([f"config file not found: {path}"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"not valid YAML{where}: {problem}"], str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(["the file is not UTF-8 text"], str(path)) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"the top level must be a mapping of keys, got {type(raw).__name__}"], str(path))
    return raw


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([f"override {item!r} is not of the form key=value (e.g. training.learning_rate=1e-4)"])
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    if len(parts) == 1 and parts[0] not in RunConfig.model_fields:
        owners = [name for name, section in SECTIONS.items() if parts[0] in section.model_fields]
        if len(owners) == 1:
            parts = [owners[0], parts[0]]
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError([f"override {item!r}: {part!r} is not a section"])
        node = child
    node[parts[-1]] = value


def dump_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False), encoding="utf-8")


def reference_markdown() -> str:
    """The config reference as Markdown tables, generated from the schema (used for the README)."""
    out = []
    top = {name: f for name, f in RunConfig.model_fields.items() if name not in SECTIONS}
    for title, fields in [("top level", top)] + [(name, sec.model_fields) for name, sec in SECTIONS.items()]:
        out.append(f"\n**{title}**\n\n| key | default | meaning |\n|---|---|---|")
        for name, field in fields.items():
            doc = " ".join((field.description or "").split())
            out.append(f"| `{name}` | `{yaml.safe_dump(field.default, default_flow_style=True).strip().removesuffix('...').strip()}` | {doc} |")
    return "\n".join(out).strip() + "\n"

