"""The shared config sections every task reads: `model`, `data`, `training` and `strategy`.

Names follow Hugging Face `TrainingArguments` where one exists. Every bound lives on its field
(pydantic constraints), so `tunesmith config-reference` shows it and `tunesmith validate` reports
every value out of range at once, before any weights load. Settings only one task reads live in that
task's own section, in its file under `tunesmith/tasks/`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tunesmith.config._section import Section

# Bounds that catch typos, not taste: a billion epochs or a 2**40 seed is a mistake, not a choice.
MAX_EPOCHS = 100_000
SEED_LIMIT = 2**32

class ModelConfig(Section):
    source: str = "demo:minilm"
    """Where the pre-trained weights come from: a hub id (`bert-base-uncased`), a local
    `save_pretrained` directory, or a `demo:` alias (`demo:minilm`). Images: a timm model name
    (`resnet50.a1_in1k`), a tunesmith run or `best/` folder, a weights file (`.pth`,
    `.safetensors`) with `architecture`, or `demo:efficientnet-lite0`. Tables: `mlp` or
    `ft-transformer` (a new network), or a tabular run directory to fine-tune. Recommendation: `mf`
    or `two-tower`, or a recommendation run directory."""
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
    on CPUs it is often slower for classifiers (image segmentation defaults to true: 25-30% faster
    there, measured on a CPU with AVX512-BF16)."""
    trust_remote_code: bool = False
    """Allow a model folder to run its own Python code. Off unless you trust the source."""
    dropout: float | None = Field(None, ge=0, lt=1)
    """Override every dropout probability in the model config (hidden, attention, classifier).
    `null` keeps the pre-trained model's values."""


class DataConfig(Section):
    train: str | None = None
    """Training file: CSV, TSV, JSONL or Parquet (format from the extension). Images: also a
    folder with a subfolder per class, or with `train/` and `val/` subfolders of class folders."""
    validation: str | None = None
    """Validation file (or image folder). When absent, `validation_split` of the training rows is held out."""
    validation_split: float = Field(0.1, gt=0, lt=1)
    """Fraction of training rows held out for validation (seeded and stratified by label)."""
    text_column: str = "text"
    """Column holding the input text."""
    text_pair_column: str | None = None
    """Optional second text column for sentence-pair tasks (e.g. premise/hypothesis)."""
    label_column: str = "label"
    """Column holding the label (names or integers)."""
    max_length: int = Field(128, ge=1)
    """Longest input in tokens; longer texts are truncated (and counted in the log). For
    question-answering the default is 384, and longer contexts are read in windows instead."""
    bad_rows: Literal["skip", "error"] = "skip"
    """Rows with empty text or a missing label (images: also unreadable or truncated files):
    `skip` drops them with a count and a warning, `error` stops the run and names the rows."""
    max_train_samples: int | None = Field(None, ge=1)
    """Train on a seeded random sample of N rows; handy for quick runs."""
    max_eval_samples: int | None = Field(None, ge=1)
    """Validate on a seeded random sample of N rows."""


class TrainingConfig(Section):
    num_train_epochs: float = Field(3, gt=0, le=MAX_EPOCHS)
    """Number of passes over the training data (may be fractional)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps; overrides `num_train_epochs` when set."""
    learning_rate: float = Field(5e-5, gt=0)
    """Peak learning rate of the top layer group (the head)."""
    per_device_train_batch_size: int = Field(32, ge=1)
    """Examples per micro-batch on each device."""
    per_device_eval_batch_size: int = Field(64, ge=1)
    """Examples per evaluation batch on each device."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Micro-batches accumulated before each optimizer step."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay; never applied to biases and normalization weights."""
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    """AdamW beta1."""
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    """AdamW beta2."""
    adam_epsilon: float = Field(1e-8, gt=0)
    """AdamW epsilon."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient norm to this value; `null` disables clipping."""
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate decay after warm-up."""
    warmup_ratio: float | None = Field(None, ge=0, le=1)
    """Fraction of all optimizer steps spent warming up (default 0.1 when neither warm-up key is set)."""
    warmup_steps: int | None = Field(None, ge=0)
    """Number of warm-up steps; give this or `warmup_ratio`, not both."""
    seed: int = Field(42, ge=0, lt=SEED_LIMIT)
    """Seed for splits, shuffling, initialization and dropout."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """`auto` uses bf16 on GPUs that have it, fp16 on other GPUs, bf16 on CPUs with bf16 matrix
    instructions (AMX or AVX512-BF16) and full precision on other CPUs; the log says which and why."""
    eval_strategy: Literal["epoch", "steps"] = "epoch"
    """Evaluate at the end of every epoch, or every `eval_steps` optimizer steps."""
    eval_steps: int | None = Field(None, ge=1)
    """Optimizer steps between evaluations when `eval_strategy: steps`."""
    metric_for_best_model: str | None = None
    """Validation metric that selects the best checkpoint and drives early stopping. `null` takes
    the task's own choice; `tunesmith tasks` lists each task's metrics, the first being its default
    (text-classification: `accuracy`, token-classification and question-answering: `f1`,
    seq2seq and causal-lm: `loss`)."""
    early_stopping_patience: int | None = Field(3, ge=1)
    """Stop after this many evaluations without improvement; `null` never stops early."""
    early_stopping_threshold: float = Field(0.0, ge=0)
    """Smallest change of the metric that counts as an improvement."""
    label_smoothing_factor: float = Field(0.0, ge=0, lt=1)
    """Label smoothing for the cross-entropy loss (0 disables)."""
    class_weights: Literal["none", "balanced"] = "none"
    """`balanced` weights the loss by inverse class frequency, for imbalanced labels."""
    group_by_length: bool = True
    """Batch examples of similar length together so less padding is computed."""
    logging_steps: int = Field(10, ge=1)
    """Optimizer steps between progress-bar updates of the loss and learning rate."""
    save_steps: int | None = Field(None, ge=1)
    """Also write a checkpoint every N optimizer steps (checkpoints are always written at each
    evaluation and when SIGTERM or Ctrl-C stops a run)."""
    save_total_limit: int = Field(1, ge=1)
    """How many step checkpoints to keep in `checkpoints/` (the best model is kept separately)."""
    activation_cache: Literal["auto", "off"] = "auto"
    """Frozen-prefix activation cache: with the first groups frozen for good and inputs that do
    not change between epochs, record the frozen part's outputs in one epoch and run only the
    trainable top afterwards (same numbers, less compute). `auto` uses it where it is safe."""
    torch_compile: bool = False
    """Compile the model's forward with `torch.compile` (inductor, dynamic shapes). The first
    steps are slower while it compiles (and again when freezing changes); on GPUs and long runs
    the later ones are faster. Turns the activation cache off."""
    activation_cache_max_gb: float = Field(2.0, ge=0)
    """Above this size the activation cache lives in a disk-backed memmap in the run directory."""
    nan_policy: Literal["stop", "skip"] = "stop"
    """When the loss or gradients become NaN/inf: `stop` (the update is not applied, the rows are
    written to bad_batches.json, the last good checkpoint kept) or `skip` the update and go on."""
    max_nan_skips: int = Field(10, ge=0)
    """Under `nan_policy: skip`, stop after this many skipped steps."""
    dataloader_num_workers: int | None = Field(None, ge=0)
    """Worker processes for data loading. `null` sizes it to the data: 0 for text (pre-tokenized
    in memory), one per spare CPU core (at most 8) for images, which are decoded on the fly."""
    auto_find_batch_size: bool = False
    """GPU: halve the micro-batch until a training step fits in memory, raising accumulation to keep the effective batch."""


class PseudoLabelConfig(Section):
    data: str | None = None
    """Unlabelled rows (a file or folder, the training data's columns without the label) to self-train
    on: a labelled-only run pseudo-labels them, then the config trains again on the labelled rows plus
    those whose calibrated probability reaches `threshold` (strategies/pseudo_label.py). Single-label
    text, image and audio classification."""
    threshold: float = Field(0.9, gt=0, le=1)
    """The calibrated top-class probability a row needs to be pseudo-labelled."""
    labels: str | None = None
    """A pseudo-label file (`self_train/pseudo_labels.jsonl`: `line` and `label` per row of `data`) to
    train with directly; self-training sets it for its last stage, so the run's config.yaml repeats it."""


class StrategyConfig(Section):
    freeze: Literal["none", "head_only"] | Annotated[int, Field(ge=0)] = "none"
    """Which layer groups are frozen: `none`, `head_only` (train only the head), or an integer k
    (freeze the first k groups, counting from the embeddings)."""
    freeze_groups: list[str] = []
    """Layer groups frozen by name, besides those `freeze` sets (`tunesmith inspect` lists the names):
    `[item_embeddings, item_biases]` keeps a recommender's item side fixed while new users fold in."""
    gradual_unfreezing: bool = False
    """ULMFiT-style: start with only the head trainable and unfreeze one more group per epoch,
    from the top down (never below the `freeze` floor)."""
    layer_lr_decay: float = Field(1.0, gt=0)
    """Discriminative learning rates: each group going down gets the learning rate of the group
    above times this factor (1.0 = one rate for all; 0.8 is a common choice)."""
    l2_sp: float = Field(0.0, ge=0)
    """L2-SP forgetting guard: after each step, pull every weight `lr x l2_sp` of the way back to its
    starting (pre-trained or parent) value, like weight decay toward the start instead of zero; a new
    head is not pulled. 0 is off; 0.1 to 10 are usual."""
    pseudo_label: PseudoLabelConfig = PseudoLabelConfig()
    """Self-training: `data` names unlabelled rows (the training columns without the label); a
    labelled-only run pseudo-labels those whose calibrated top-class probability reaches `threshold`
    (0.9 unless set), and the config trains again on both. `labels` (a `pseudo_labels.jsonl`) trains on
    such a file directly; the last stage sets it. Text, image and audio classification."""
