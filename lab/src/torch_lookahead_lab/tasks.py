"""The lab's training tasks. Every dataset ships with the installed packages or sits on the user's
disk; nothing is downloaded.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images), a small CNN.
* ``charlm``: a byte-level LSTM language model on a fixed, sorted selection of the Python standard
  library's own source files (about 1 MB, then 100 KB more held out for a test split), measured
  in validation (and test) bits per character.
* ``charlm-transformer``: the same corpus and split with a small causal Transformer (2 layers,
  width 64, 4 heads), no gradient clipping: the task of the stability experiment.
* ``cifar10``: ResNet-18 on CIFAR-10 read from the standard python-pickle batches in ``data_dir``:
  a fixed stratified tenth of the training batches validates, the official test batch tests.

A task is a thin object over pure functions: it loads tensors, builds a fresh model, draws a batch
from an explicit ``torch.Generator``, computes the training loss and evaluates the model.
"""

from __future__ import annotations

import functools
import hashlib
import math
import pickle
import sysconfig
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch_lookahead_lab.models import CharLSTM, CharTransformer, DigitsCNN, ResNet18

__all__ = [
    "CORPUS_BYTES",
    "SCHEDULES",
    "TASKS",
    "TEST_BYTES",
    "CharLMTask",
    "CharTransformerTask",
    "Cifar10Task",
    "DigitsTask",
    "PostNormCharTransformerTask",
    "Task",
    "TaskData",
    "TaskSettings",
    "check_schedule",
    "cifar10_val_rows",
    "get_task",
    "lr_multiplier",
    "stdlib_corpus",
]

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class TaskSettings:
    """How long a run trains and how often it is evaluated."""

    steps: int
    eval_every: int
    batch_size: int

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")


@dataclass(frozen=True)
class TaskData:
    """Tensors of one task, already on the run's device.

    ``train_eval_*`` is a fixed part of the training data on which the training loss is measured.
    """

    train_inputs: Tensor
    train_targets: Tensor
    val_inputs: Tensor
    val_targets: Tensor
    train_eval_inputs: Tensor
    train_eval_targets: Tensor
    # A held-out test split, never used to choose anything (tasks that have one).
    test_inputs: Tensor | None = None
    test_targets: Tensor | None = None


class Task(ABC):
    """A training problem: data, model, loss and metrics."""

    name: str
    description: str
    headline_metric: str
    higher_is_better: bool
    full: TaskSettings
    quick: TaskSettings
    learning_rates: Mapping[str, float]
    optimizer_overrides: Mapping[str, Mapping[str, Any]] = MappingProxyType({})
    max_grad_norm: float | None = None
    needs_data_dir: bool = False
    prefers_gpu: bool = False
    schedule: str = "cosine"  # the learning-rate schedule of the task's default protocol
    model_description: str = ""
    split_description: str = ""
    # The test split of a ``test_at_ends`` task, which only runs that measure it report.
    test_split_description: str = ""
    # The headline metric on a held-out test split, for tasks that have one: comparisons are
    # reported there, choices (a learning rate) are made on the validation split.
    test_metric: str | None = None
    # True when ``evaluate`` leaves the test split out and ``evaluate_test`` measures it: a run
    # asks for it at its first and last evaluation only (``RunConfig.evaluate_test``).
    test_at_ends: bool = False
    # Keep every step's training loss (the stability study's instability endpoint).
    records_step_losses: bool = False

    def learning_rate(self, inner: str) -> float:
        """The default learning rate of ``inner`` on this task (3e-3 for unlisted optimizers)."""
        return self.learning_rates.get(inner, 3e-3)

    @abstractmethod
    def load(self, data_dir: str | None, device: str, *, verify: bool = True) -> TaskData:
        """Load the task's tensors onto ``device``; ``verify=False`` skips the checksums of
        files read from ``data_dir`` (unsafe: see ``Cifar10Task``)."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (the caller seeds the global generator)."""

    @abstractmethod
    def sample_batch(self, data: TaskData, generator: torch.Generator, batch_size: int) -> Batch:
        """One training minibatch drawn with ``generator`` (a CPU generator)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """The training loss of ``model`` on ``batch`` (mean cross-entropy, in nats)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        """``train_loss``, ``val_loss`` and the headline metric, under ``torch.no_grad``."""

    def evaluate_test(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        """The metrics of the held-out test split that ``evaluate`` leaves out (``test_at_ends``
        tasks); none for the others."""
        return {}

    def test_examples(self, model: nn.Module, data: TaskData) -> Tensor | None:
        """Per example of the held-out test split, whether ``model`` classifies it correctly
        (a boolean vector on the CPU; its mean is the ``test_accuracy`` that ``evaluate``
        measures), or None for a task without a test accuracy."""
        return None

    def check_data(self, data_dir: str | None, *, verify: bool = True) -> None:
        """Raise a ValueError saying what is missing (or, with ``verify``, which file is not the
        official release) when the task cannot use its data."""
        return None  # tasks whose data ships with the packages have nothing to check


@torch.no_grad()
def _cross_entropy_in_chunks(
    model: nn.Module, inputs: Tensor, targets: Tensor, chunk: int
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``inputs`` taken ``chunk`` rows at a time."""
    total_loss = 0.0
    correct = 0
    count = 0
    for start in range(0, inputs.shape[0], chunk):
        logits = model(inputs[start : start + chunk])
        labels = targets[start : start + chunk]
        logits = logits.reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1)
        total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == labels).sum())
        count += labels.numel()
    return total_loss / count, correct / count


@torch.no_grad()
def _correct_in_chunks(model: nn.Module, inputs: Tensor, targets: Tensor, chunk: int) -> Tensor:
    """Per row of ``inputs``, whether ``model``'s highest logit is its target (as
    ``_cross_entropy_in_chunks`` counts it), taken ``chunk`` rows at a time, on the CPU."""
    parts = [
        model(inputs[start : start + chunk]).argmax(dim=-1) == targets[start : start + chunk]
        for start in range(0, inputs.shape[0], chunk)
    ]
    return torch.cat(parts).cpu()


def _random_rows(data: TaskData, generator: torch.Generator, batch_size: int) -> Batch:
    rows = torch.randint(0, data.train_inputs.shape[0], (batch_size,), generator=generator)
    rows = rows.to(data.train_inputs.device)
    return data.train_inputs[rows], data.train_targets[rows]


class _ClassificationTask(Task):
    """Image classification: cross-entropy loss; training loss, validation loss and accuracy."""

    headline_metric = "val_accuracy"
    higher_is_better = True
    eval_chunk = 2048

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return F.cross_entropy(model(batch[0]), batch[1])

    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        train_loss, _ = _cross_entropy_in_chunks(
            model, data.train_eval_inputs, data.train_eval_targets, chunk=self.eval_chunk
        )
        val_loss, val_accuracy = _cross_entropy_in_chunks(
            model, data.val_inputs, data.val_targets, chunk=self.eval_chunk
        )
        metrics = {"train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_accuracy}
        if data.test_inputs is not None and data.test_targets is not None:
            test_loss, test_accuracy = _cross_entropy_in_chunks(
                model, data.test_inputs, data.test_targets, chunk=self.eval_chunk
            )
            metrics |= {"test_loss": test_loss, "test_accuracy": test_accuracy}
        return metrics

    def test_examples(self, model: nn.Module, data: TaskData) -> Tensor | None:
        if data.test_inputs is None or data.test_targets is None:
            return None
        return _correct_in_chunks(model, data.test_inputs, data.test_targets, self.eval_chunk)


class DigitsTask(_ClassificationTask):
    """scikit-learn's 8x8 digits (1,797 images) in fixed stratified splits, a two-layer CNN,
    cross-entropy; the training loss on the first ``train_eval_size`` training images (a fixed
    random subset; all of them by default).

    Without ``held_out`` (the default, for the examples): 1,437 training and 360 validation
    images. With it (the lab's "digits"): 1,077 training, 360 validation and 360 test images;
    the validation split is for choices (a learning rate), the test split for the comparison
    reported after them."""

    name = "digits"
    description = "scikit-learn 8x8 digits (1,797 images), small CNN"
    model_description = (
        "a CNN of two 3x3 convolutions (16 and 32 channels), a 2x2 max-pool and a 64-unit "
        "hidden layer, cross-entropy loss"
    )
    full = TaskSettings(steps=300, eval_every=50, batch_size=64)
    quick = TaskSettings(steps=60, eval_every=20, batch_size=64)
    learning_rates = MappingProxyType({"sgd": 0.05, "adam": 2e-3, "adamw": 2e-3, "radam": 2e-3})

    def __init__(self, train_eval_size: int | None = None, *, held_out: bool = False) -> None:
        train_size = 1077 if held_out else 1437
        if train_eval_size is not None and not 1 <= train_eval_size <= train_size:
            raise ValueError(
                f"train_eval_size must lie in [1, {train_size}], got {train_eval_size}"
            )
        self.train_eval_size = train_eval_size
        self.held_out = held_out
        self.test_metric = "test_accuracy" if held_out else None
        measured = (
            f"all {train_size:,}"
            if train_eval_size is None
            else f"a fixed subset of {train_eval_size}"
        )
        splits = (
            "1,077 training, 360 validation (for choices) and 360 test images (for the reported "
            "comparisons)"
            if held_out
            else "1,437 training and 360 validation images"
        )
        self.split_description = (
            f"scikit-learn's bundled 8x8 handwritten digits: a fixed stratified split of {splits}; "
            f"the training loss is measured on {measured}"
        )

    def load(self, data_dir: str | None, device: str, *, verify: bool = True) -> TaskData:
        parts = _digits_split(self.held_out)
        train_x, train_y = parts[0], parts[1]
        size = self.train_eval_size or train_x.shape[0]
        moved = [tensor.to(device) for tensor in parts]
        test = moved[4:6] if self.held_out else [None, None]
        return TaskData(
            moved[0], moved[1], moved[2], moved[3], train_x[:size].to(device),
            train_y[:size].to(device), test[0], test[1],
        )  # fmt: skip

    def build_model(self) -> nn.Module:
        return DigitsCNN()

    def sample_batch(self, data: TaskData, generator: torch.Generator, batch_size: int) -> Batch:
        return _random_rows(data, generator, batch_size)


@functools.lru_cache(maxsize=2)
def _digits_split(held_out: bool) -> tuple[Tensor, ...]:
    """(train images, labels, validation images, labels[, test images, labels]): 20% of the
    images for validation as ever; with ``held_out``, a further 360 of the training images,
    stratified, for a test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    rows = torch.arange(labels.numel()).numpy()
    train_rows, val_rows = train_test_split(
        rows, test_size=0.2, random_state=0, stratify=labels.numpy()
    )
    parts = [train_rows, val_rows]
    if held_out:
        train_rows, test_rows = train_test_split(
            train_rows, test_size=360, random_state=1, stratify=labels.numpy()[train_rows]
        )
        parts = [train_rows, val_rows, test_rows]
    out: list[Tensor] = []
    for part in parts:
        index = torch.as_tensor(part)
        out += [images[index], labels[index]]
    return tuple(out)


# The character-LM corpus's bytes: the first CORPUS_BYTES train (90%) and validate (10%); the
# next TEST_BYTES of the same sequence of files are the held-out test split.
CORPUS_BYTES = 1_000_000
TEST_BYTES = 100_000


def stdlib_corpus(max_bytes: int = CORPUS_BYTES) -> bytes:
    """The character-LM corpus: the standard library's top-level ``*.py`` files in sorted name
    order, concatenated until ``max_bytes`` bytes (the last file is cut). A longer corpus starts
    with every shorter one: ``stdlib_corpus(CORPUS_BYTES + TEST_BYTES)`` is the corpus and then
    the test split.

    The text is what the running interpreter ships, so it depends on the Python version; the run
    cache keys on its SHA-256 (see ``corpus_fingerprint``).
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    pieces: list[bytes] = []
    size = 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_bytes()
        pieces.append(text)
        size += len(text)
        if size >= max_bytes:
            break
    corpus = b"".join(pieces)[:max_bytes]
    if len(corpus) < 100_000:
        raise RuntimeError(
            f"the standard library at {stdlib} has only {len(corpus)} bytes of source"
        )
    return corpus


@functools.lru_cache(maxsize=2)
def corpus_fingerprint(with_test: bool = False) -> str:
    """SHA-256 (first 16 hex digits) of ``stdlib_corpus()``, or with ``with_test`` of the corpus
    and its test split: it changes when the interpreter's standard library does."""
    size = CORPUS_BYTES + (TEST_BYTES if with_test else 0)
    return hashlib.sha256(stdlib_corpus(size)).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _charlm_text() -> tuple[Tensor, Tensor]:
    """(the corpus, its test split) as byte tensors: ``stdlib_corpus(CORPUS_BYTES +
    TEST_BYTES)`` cut at ``CORPUS_BYTES``."""
    text = stdlib_corpus(CORPUS_BYTES + TEST_BYTES)
    if len(text) < CORPUS_BYTES + TEST_BYTES:
        raise RuntimeError(
            f"the standard library has only {len(text)} bytes of top-level source, fewer than "
            f"the {CORPUS_BYTES + TEST_BYTES} of the corpus and its test split"
        )
    tensor = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    return tensor[:CORPUS_BYTES], tensor[CORPUS_BYTES:]


class CharLMTask(Task):
    """Byte-level language modelling on ``stdlib_corpus()``: the first 90% trains, the last 10%
    validates; the next ``TEST_BYTES`` of the same files (``_charlm_text``) are a held-out test
    split, measured by ``evaluate_test`` (a run asks for it at its first and last evaluation).
    Windows of 64 bytes; a one-layer LSTM (128 units); gradient norm clipped at 1. The headline
    metric is validation bits per character, ``val_loss / ln 2``; ``test_bpc`` on the test split.
    """

    name = "charlm"
    description = "byte-level LSTM LM on 1 MB of the Python standard library's source"
    model_description = (
        "a byte-level language model: 32-dimensional embedding, one LSTM layer of 128 units, "
        "a linear read-out to 256 bytes; windows of 64 bytes; gradient norm clipped at 1"
    )
    split_description = (
        "the first megabyte of the Python standard library's top-level *.py files in sorted "
        "order: the first 90% trains, the last 10% validates (non-overlapping windows); the "
        "training loss is measured on 64 fixed training windows"
    )
    test_split_description = (
        "the next 100,000 bytes of the same sequence of files are the held-out test split "
        "(non-overlapping windows, measured at the start and end of each run): choices are made "
        "on the validation split, comparisons reported on the test split"
    )
    headline_metric = "val_bpc"
    test_metric = "test_bpc"
    test_at_ends = True
    higher_is_better = False
    full = TaskSettings(steps=2000, eval_every=200, batch_size=32)
    quick = TaskSettings(steps=40, eval_every=20, batch_size=16)
    learning_rates = MappingProxyType({"sgd": 1.0, "adam": 3e-3, "adamw": 3e-3, "radam": 3e-3})
    optimizer_overrides = MappingProxyType({"sgd": MappingProxyType({"momentum": 0.0})})
    max_grad_norm: float | None = 1.0
    window = 64
    eval_windows = 64

    def load(self, data_dir: str | None, device: str, *, verify: bool = True) -> TaskData:
        text, test_text = _charlm_text()
        split = int(0.9 * text.numel())
        train_text, val_text = text[:split], text[split:]
        val_x, val_y = _non_overlapping_windows(val_text, self.window)
        test_x, test_y = _non_overlapping_windows(test_text, self.window)
        # A fixed set of training windows, evenly spaced, for the training loss.
        stride = (train_text.numel() - self.window - 1) // self.eval_windows
        starts = torch.arange(self.eval_windows) * stride
        train_eval_x, train_eval_y = _windows_at(train_text, starts, self.window)
        empty = torch.empty(0, dtype=torch.long)
        return TaskData(
            train_text.to(device),
            empty.to(device),
            val_x.to(device),
            val_y.to(device),
            train_eval_x.to(device),
            train_eval_y.to(device),
            test_x.to(device),
            test_y.to(device),
        )

    def build_model(self) -> nn.Module:
        return CharLSTM()

    def sample_batch(self, data: TaskData, generator: torch.Generator, batch_size: int) -> Batch:
        text = data.train_inputs
        starts = torch.randint(
            0, text.numel() - self.window - 1, (batch_size,), generator=generator
        )
        return _windows_at(text, starts.to(text.device), self.window)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        logits = model(batch[0])
        return F.cross_entropy(logits.reshape(-1, 256), batch[1].reshape(-1))

    def evaluate(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        train_loss, _ = _cross_entropy_in_chunks(
            model, data.train_eval_inputs, data.train_eval_targets, chunk=64
        )
        val_loss, _ = _cross_entropy_in_chunks(model, data.val_inputs, data.val_targets, chunk=64)
        return {"train_loss": train_loss, "val_loss": val_loss, "val_bpc": val_loss / math.log(2)}

    def evaluate_test(self, model: nn.Module, data: TaskData) -> dict[str, float]:
        if data.test_inputs is None or data.test_targets is None:
            raise ValueError(f"the {self.name} data has no test split")
        loss, _ = _cross_entropy_in_chunks(model, data.test_inputs, data.test_targets, chunk=64)
        return {"test_loss": loss, "test_bpc": loss / math.log(2)}


class CharTransformerTask(CharLMTask):
    """``charlm``'s corpus, split and windows with a small causal Transformer in place of the
    LSTM, and no gradient clipping, so that too large a learning rate shows: the task of the
    stability experiment (``torch-lookahead stability``). Runs are short (300 steps)."""

    name = "charlm-transformer"
    description = "byte-level causal Transformer LM on 1 MB of the Python standard library's source"
    model_description = (
        "a byte-level causal Transformer: byte and learned position embeddings of width 64, two "
        "pre-norm blocks of 4-head causal self-attention and a 256-unit GELU MLP, a final layer "
        "norm and a linear read-out to 256 bytes; windows of 64 bytes; no gradient clipping"
    )
    full = TaskSettings(steps=300, eval_every=100, batch_size=16)
    quick = TaskSettings(steps=20, eval_every=10, batch_size=8)
    learning_rates = MappingProxyType({"adam": 3e-3, "adamw": 3e-3, "sgd": 0.3, "radam": 3e-3})
    optimizer_overrides = MappingProxyType({})
    max_grad_norm = None
    records_step_losses = True

    def build_model(self) -> nn.Module:
        return CharTransformer(context=self.window)


class PostNormCharTransformerTask(CharTransformerTask):
    """``charlm-transformer`` with post-norm blocks (the original Transformer's
    ``norm(x + f(x))``): the variant that needs learning-rate warm-up most, for the stability
    study beside the pre-norm one."""

    name = "charlm-transformer-postln"
    model_description = (
        "a byte-level causal Transformer: byte and learned position embeddings of width 64, two "
        "post-norm blocks of 4-head causal self-attention and a 256-unit GELU MLP, a linear "
        "read-out to 256 bytes; windows of 64 bytes; no gradient clipping"
    )

    def build_model(self) -> nn.Module:
        return CharTransformer(context=self.window, norm_first=False)


def _windows_at(text: Tensor, starts: Tensor, window: int) -> Batch:
    offsets = torch.arange(window + 1, device=text.device)
    rows = text[starts.unsqueeze(1) + offsets]
    return rows[:, :-1], rows[:, 1:]


def _non_overlapping_windows(text: Tensor, window: int) -> Batch:
    count = (text.numel() - 1) // window
    starts = torch.arange(count) * window
    return _windows_at(text, starts, window)


class Cifar10Task(_ClassificationTask):
    """ResNet-18 on CIFAR-10 (the paper's headline experiment). Of the five training batches a
    fixed stratified tenth (of each class: 5,000 of the official 50,000 images,
    ``cifar10_val_rows``) validates, for choices; the rest (45,000) trains; the official
    ``test_batch`` (10,000) is the test split, for the reported comparisons. Random crop (4-pixel
    padding) and horizontal flip; per-channel normalisation with the training images'
    statistics; SGD recipe of the paper's Cutout base code: batch 128, 200 epochs, learning rate
    divided by 5 at 30%, 60% and 80% of training, weight decay 5e-4. Meant for a GPU.
    """

    name = "cifar10"
    description = "ResNet-18 on CIFAR-10 from --data-dir (python-pickle batches)"
    model_description = (
        "ResNet-18 (CIFAR form), random 4-pixel-shift crops and horizontal flips, per-channel "
        "normalisation, weight decay 5e-4 (the recipe of the paper's base code)"
    )
    split_description = (
        "the official CIFAR-10 python batches: of the 50,000 training images a fixed stratified "
        "5,000 (500 per class, drawn with seed 0) validate (for choices) and 45,000 train (the "
        "training loss on the first 10,000 of them); the official 10,000 test images are the "
        "held-out test split (for the reported comparisons)"
    )
    schedule = "step"
    eval_chunk = 500
    test_metric = "test_accuracy"
    # 200 epochs of the 45,000 training images in batches of 128 (352 steps an epoch).
    full = TaskSettings(steps=200 * 352, eval_every=352, batch_size=128)
    quick = TaskSettings(steps=20, eval_every=10, batch_size=32)
    learning_rates = MappingProxyType({"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "radam": 1e-3})
    optimizer_overrides = MappingProxyType(
        {
            "sgd": MappingProxyType({"momentum": 0.9, "weight_decay": 5e-4}),
            "adam": MappingProxyType({"weight_decay": 5e-4}),
            "adamw": MappingProxyType({"weight_decay": 5e-4}),
            "radam": MappingProxyType({"weight_decay": 5e-4}),
        }
    )
    needs_data_dir = True
    prefers_gpu = True
    train_eval_size = 10_000

    def load(self, data_dir: str | None, device: str, *, verify: bool = True) -> TaskData:
        images, labels, test_x, test_y = load_cifar10(data_dir, verify=verify)
        held = torch.zeros(labels.numel(), dtype=torch.bool)
        held[cifar10_val_rows(labels)] = True
        train_x, train_y = images[~held], labels[~held]
        val_x, val_y = images[held], labels[held]
        mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
        std = train_x.std(dim=(0, 2, 3), keepdim=True)
        train_x, val_x, test_x = ((x - mean) / std for x in (train_x, val_x, test_x))
        size = min(self.train_eval_size, train_x.shape[0])
        parts = (train_x, train_y, val_x, val_y, train_x[:size], train_y[:size], test_x, test_y)
        return TaskData(*(part.to(device) for part in parts))

    def build_model(self) -> nn.Module:
        return ResNet18()

    def sample_batch(self, data: TaskData, generator: torch.Generator, batch_size: int) -> Batch:
        images, labels = _random_rows(data, generator, batch_size)
        return augment_crop_flip(images, generator), labels

    def check_data(self, data_dir: str | None, *, verify: bool = True) -> None:
        folder = _cifar10_folder(data_dir)
        if verify:
            for name in CIFAR10_FILES:
                _check_md5(folder / name)


# The share of each class of the CIFAR-10 training batches that validates, and the seed that
# draws it (``cifar10_val_rows``).
VAL_FRACTION_DENOMINATOR = 10
VAL_SEED = 0


def cifar10_val_rows(labels: Tensor) -> Tensor:
    """The rows of the CIFAR-10 training images (in the order of data_batch_1 ... 5) that
    validate, sorted: of each class's rows, in that order, ``1 / VAL_FRACTION_DENOMINATOR``
    (rounded down; 500 of 5,000 in the official release) drawn by a ``torch.randperm`` of a
    generator seeded with ``VAL_SEED``, the classes taken in increasing label order."""
    generator = torch.Generator().manual_seed(VAL_SEED)
    picked = []
    for label in torch.unique(labels, sorted=True):
        rows = (labels == label).nonzero().flatten()
        count = rows.numel() // VAL_FRACTION_DENOMINATOR
        picked.append(rows[torch.randperm(rows.numel(), generator=generator)[:count]])
    return torch.cat(picked).sort().values


SCHEDULES = {
    "constant": "constant learning rate",
    "cosine": "cosine decay from the learning rate to zero over the run",
    "step": "learning rate divided by 5 at 30%, 60% and 80% of the run",
}


def check_schedule(name: str) -> str:
    """Return ``name`` if it is one of ``SCHEDULES``; raise a ValueError listing them otherwise."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; accepted values: {', '.join(SCHEDULES)}")
    return name


def lr_multiplier(
    schedule: str, total_steps: int, warmup_steps: int = 0
) -> Callable[[int], float] | None:
    """The learning-rate multiplier of ``schedule`` at a step (0-based) of a ``total_steps`` run,
    times a linear warm-up over the first ``warmup_steps`` steps (``(step + 1) / warmup_steps``);
    None for a constant learning rate without warm-up."""
    check_schedule(schedule)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be zero or positive, got {warmup_steps}")
    base = _schedule_multiplier(schedule, total_steps)
    if warmup_steps == 0:
        return base
    return functools.partial(_warmed_up, warmup_steps=warmup_steps, base=base)


def _warmed_up(step: int, warmup_steps: int, base: Callable[[int], float] | None) -> float:
    factor = min(1.0, (step + 1) / warmup_steps)
    return factor * (1.0 if base is None else base(step))


def _schedule_multiplier(schedule: str, total_steps: int) -> Callable[[int], float] | None:
    if schedule == "cosine":
        return functools.partial(_cosine, total_steps=total_steps)
    if schedule == "step":
        milestones = tuple(int(total_steps * fraction) for fraction in (0.3, 0.6, 0.8))
        return functools.partial(_step_decay, milestones=milestones, factor=0.2)
    return None


def _cosine(step: int, total_steps: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def _step_decay(step: int, milestones: tuple[int, ...], factor: float) -> float:
    return factor ** sum(step >= milestone for milestone in milestones)


def augment_crop_flip(images: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random ``padding``-pixel-shift crops (zero padding) and horizontal flips, per image."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    shifts = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5
    rows = torch.arange(height).unsqueeze(0) + shifts[0].unsqueeze(1)  # (batch, height)
    cols = torch.arange(width).unsqueeze(0) + shifts[1].unsqueeze(1)  # (batch, width)
    cols = torch.where(flips.unsqueeze(1), cols.flip(1), cols)
    rows, cols = rows.to(images.device), cols.to(images.device)
    batch_index = torch.arange(batch, device=images.device)[:, None, None, None]
    channel_index = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


# The MD5 checksums of the files in the official release (cifar-10-python.tar.gz from
# https://www.cs.toronto.edu/~kriz/cifar.html), as torchvision also checks them.
CIFAR10_MD5 = MappingProxyType(
    {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    }
)
CIFAR10_FILES = tuple(CIFAR10_MD5)


def _check_md5(path: Path) -> None:
    """Refuse a file that is not the official release's: unpickling a file runs its code."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    expected = CIFAR10_MD5[path.name]
    if digest.hexdigest() != expected:
        raise ValueError(
            f"{str(path)!r} is not the official CIFAR-10 {path.name} (MD5 {digest.hexdigest()}, "
            f"expected {expected}); the batches are pickles and unpickling runs code, so only the "
            "official files are read. Extract them again from cifar-10-python.tar.gz "
            "(https://www.cs.toronto.edu/~kriz/cifar.html), or pass --unsafe-skip-checksums "
            "for a copy of your own that you trust."
        )


def _cifar10_folder(data_dir: str | None) -> Path:
    hint = (
        "the cifar10 task reads the standard CIFAR-10 python batches (data_batch_1 ... data_batch_5, "
        "test_batch) from disk and never downloads them; pass --data-dir pointing at the folder "
        "that holds them (or at its parent containing cifar-10-batches-py/)"
    )
    if data_dir is None:
        raise ValueError(f"data_dir is required: {hint}")
    root = Path(data_dir).expanduser()
    for folder in (root, root / "cifar-10-batches-py"):
        if all((folder / name).is_file() for name in CIFAR10_FILES):
            return folder
    raise ValueError(f"data_dir={str(root)!r} does not hold the CIFAR-10 batches: {hint}")


@functools.lru_cache(maxsize=2)
def load_cifar10(
    data_dir: str | None, *, verify: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training images and labels, then test images and labels, as float tensors in [0, 1].

    Each file is checked against the official release's MD5 before it is unpickled, unless
    ``verify=False`` (unsafe: a pickle can run any code when it is read).
    """
    folder = _cifar10_folder(data_dir)

    def read(name: str) -> Batch:
        if verify:
            _check_md5(folder / name)
        with open(folder / name, "rb") as handle:
            entry = pickle.load(handle, encoding="bytes")
        images = torch.as_tensor(entry[b"data"], dtype=torch.uint8).reshape(-1, 3, 32, 32)
        labels = torch.as_tensor(list(entry[b"labels"]), dtype=torch.long)
        return images.float() / 255.0, labels

    train = [read(name) for name in CIFAR10_FILES[:-1]]
    test_x, test_y = read(CIFAR10_FILES[-1])
    return (
        torch.cat([x for x, _ in train]),
        torch.cat([y for _, y in train]),
        test_x,
        test_y,
    )


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        DigitsTask(train_eval_size=360, held_out=True),
        CharLMTask(),
        CharTransformerTask(),
        PostNormCharTransformerTask(),
        Cifar10Task(),
    )
}


def get_task(name: str) -> Task:
    """The task called ``name``; a ValueError lists the accepted names."""
    if name in TASKS:
        return TASKS[name]
    if name == "nqm":
        raise ValueError(
            "task 'nqm' is not a training task: run `torch-lookahead nqm` for the noisy quadratic model"
        )
    raise ValueError(f"unknown task {name!r}; accepted values: {', '.join(sorted(TASKS))}")
