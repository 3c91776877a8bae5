"""Tasks, models, the inner optimizers and the experiment plans."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_lookahead import Lookahead
from torch_lookahead_lab import tasks
from torch_lookahead_lab.experiments import (
    compare_configs,
    k_alpha_configs,
    lr_sweep_configs,
    parse_float_list,
    parse_int_list,
    parse_lr_range,
)
from torch_lookahead_lab.models import ResNet18
from torch_lookahead_lab.optimizers import available_inner_optimizers, build_optimizer
from torch_lookahead_lab.tasks import (
    CIFAR10_FILES,
    CORPUS_BYTES,
    TEST_BYTES,
    CharLMTask,
    Cifar10Task,
    DigitsTask,
    TaskSettings,
    augment_crop_flip,
    corpus_fingerprint,
    get_task,
    lr_multiplier,
    stdlib_corpus,
)

TINY = TaskSettings(steps=4, eval_every=2, batch_size=4)


def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    data = DigitsTask().load(None, "cpu")
    assert data.train_inputs.shape == (1437, 1, 8, 8) and data.val_inputs.shape == (360, 1, 8, 8)
    assert torch.equal(data.train_inputs, DigitsTask().load(None, "cpu").train_inputs)
    assert set(data.val_targets.tolist()) == set(range(10))
    train_rows = {tuple(x.flatten().tolist()) for x in data.train_inputs}
    overlap = sum(tuple(x.flatten().tolist()) in train_rows for x in data.val_inputs)
    assert overlap < 5  # a handful of identical images exist in the dataset itself
    assert float(data.train_inputs.max()) == 1.0 and float(data.train_inputs.min()) == 0.0


def test_the_labs_digits_hold_out_a_stratified_test_split() -> None:
    """The lab's digits: the same 360 validation images, and 360 of the old training images
    set aside for testing, stratified; no image index in two splits."""
    lab = get_task("digits").load(None, "cpu")
    plain = DigitsTask().load(None, "cpu")
    assert lab.test_inputs is not None and lab.test_targets is not None
    assert lab.train_inputs.shape[0] == 1077 and lab.test_inputs.shape[0] == 360
    assert torch.equal(lab.val_inputs, plain.val_inputs)
    counts = torch.bincount(lab.test_targets, minlength=10)
    assert int(counts.min()) >= 34 and int(counts.max()) <= 38
    train_rows = {tuple(x.flatten().tolist()) for x in lab.train_inputs}
    assert sum(tuple(x.flatten().tolist()) in train_rows for x in lab.test_inputs) < 5
    assert plain.test_inputs is None  # the examples' digits keep their two splits
    assert get_task("digits").test_metric == "test_accuracy"


def test_charlm_corpus_is_a_fixed_megabyte_of_the_standard_library() -> None:
    corpus = stdlib_corpus()
    assert len(corpus) == 1_000_000 and corpus == stdlib_corpus()
    assert b"def " in corpus and b"import " in corpus
    task = CharLMTask()
    data = task.load(None, "cpu")
    inputs, targets = task.sample_batch(data, torch.Generator().manual_seed(0), 3)
    assert inputs.shape == targets.shape == (3, task.window)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.equal(data.val_inputs[:, 1:], data.val_targets[:, :-1])
    metrics = task.evaluate(task.build_model(), data)
    assert metrics["val_bpc"] == pytest.approx(metrics["val_loss"] / np.log(2))
    assert 7.0 < metrics["val_bpc"] < 9.0  # an untrained model is close to uniform over bytes


def test_charlm_holds_out_a_test_split_after_its_megabyte() -> None:
    """The test split is the next TEST_BYTES of the same file sequence: disjoint from the
    training and validation bytes, which stay the first megabyte as before; a longer corpus
    starts with the shorter one, and the fingerprint with the test split is another."""
    longer = stdlib_corpus(CORPUS_BYTES + TEST_BYTES)
    assert longer[:CORPUS_BYTES] == stdlib_corpus() and len(longer) == CORPUS_BYTES + TEST_BYTES
    task = CharLMTask()
    data = task.load(None, "cpu")
    assert data.test_inputs is not None and data.test_targets is not None
    assert data.test_inputs.shape == ((TEST_BYTES - 1) // task.window, task.window)
    first_test_window = bytes(data.test_inputs[0].tolist())
    assert first_test_window == longer[CORPUS_BYTES : CORPUS_BYTES + task.window]
    split = int(0.9 * CORPUS_BYTES)
    assert torch.equal(data.train_inputs, torch.tensor(list(longer[:split])))
    val = bytes(data.val_inputs.flatten().tolist())
    assert val == longer[split : split + len(val)]  # the validation windows, as before
    assert corpus_fingerprint(with_test=True) != corpus_fingerprint()
    model = task.build_model()
    tested = task.evaluate_test(model, data)
    assert set(tested) == {"test_loss", "test_bpc"}
    assert set(task.evaluate(model, data)) == {"train_loss", "val_loss", "val_bpc"}
    assert tested["test_bpc"] == pytest.approx(tested["test_loss"] / np.log(2))
    assert get_task("charlm").test_metric == "test_bpc" and get_task("charlm").test_at_ends
    assert (
        get_task("charlm-transformer")
        .evaluate_test(get_task("charlm-transformer").build_model(), data)
        .keys()
        == tested.keys()
    )  # the Transformer tasks inherit the split


def write_fake_cifar10(folder: Path, per_batch: int = 20) -> None:
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, per_batch).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(entry))


def trust_fake_cifar10(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the fake batches in ``folder`` the "official" ones for this test."""
    checksums = {
        name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in CIFAR10_FILES
    }
    monkeypatch.setattr(tasks, "CIFAR10_MD5", checksums)
    tasks.load_cifar10.cache_clear()


def test_cifar10_refuses_files_that_are_not_the_official_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_cifar10(tmp_path)
    tasks.load_cifar10.cache_clear()
    with pytest.raises(
        ValueError, match=r"is not the official CIFAR-10 data_batch_1 .*--unsafe-skip-checksums"
    ):
        Cifar10Task().check_data(str(tmp_path))
    with pytest.raises(ValueError, match="is not the official CIFAR-10"):
        Cifar10Task().load(str(tmp_path), "cpu")
    Cifar10Task().check_data(str(tmp_path), verify=False)  # the explicit opt-out
    # A pickle that runs code when it is read is refused before it is read.
    trust_fake_cifar10(tmp_path, monkeypatch)
    marker = tmp_path / "code-ran"
    (tmp_path / "test_batch").write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    with pytest.raises(ValueError, match="is not the official CIFAR-10 test_batch"):
        tasks.load_cifar10(str(tmp_path))
    assert not marker.exists()


def test_cifar10_reads_the_python_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    write_fake_cifar10(folder)
    trust_fake_cifar10(folder, monkeypatch)
    task = Cifar10Task()
    task.check_data(str(tmp_path))
    data = task.load(str(tmp_path), "cpu")
    # A stratified tenth of each class of the 100 training images validates (rounded down);
    # the 20 images of test_batch are the test split.
    labels = tasks.load_cifar10(str(tmp_path))[1]
    counts = torch.bincount(labels, minlength=10)
    assert data.val_inputs.shape[0] == int((counts // 10).sum()) > 0
    assert torch.equal(torch.bincount(data.val_targets, minlength=10), counts // 10)
    assert data.train_inputs.shape[0] + data.val_inputs.shape[0] == 100
    assert data.test_inputs is not None and data.test_inputs.shape == (20, 3, 32, 32)
    assert data.train_inputs.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert task.test_metric == "test_accuracy"
    images, labels = task.sample_batch(data, torch.Generator().manual_seed(0), 4)
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4,)


def test_cifar10_validates_on_a_fixed_stratified_tenth_of_the_training_images() -> None:
    """On labels laid out like the official release (5,000 per class): 500 of each class,
    5,000 in all, the same rows every time, spread over the five batches."""
    labels = torch.arange(50_000) % 10
    rows = tasks.cifar10_val_rows(labels)
    assert rows.numel() == 5_000 and torch.equal(rows, tasks.cifar10_val_rows(labels))
    assert torch.equal(torch.bincount(labels[rows]), torch.full((10,), 500))
    assert torch.equal(rows, rows.sort().values) and rows.unique().numel() == 5_000
    per_batch = torch.bincount(rows // 10_000, minlength=5)
    assert int(per_batch.min()) > 800  # not one batch's images: drawn over all five


def test_cifar10_without_its_data_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass --data-dir"):
        Cifar10Task().check_data(None)
    with pytest.raises(ValueError, match="does not hold the CIFAR-10 batches"):
        Cifar10Task().check_data(str(tmp_path))


def test_schedules() -> None:
    step = lr_multiplier("step", 100)
    assert step is not None
    assert [step(s) for s in (0, 29, 30, 59, 60, 80, 99)] == pytest.approx(
        [1, 1, 0.2, 0.2, 0.04, 0.008, 0.008]
    )
    cosine = lr_multiplier("cosine", 300)
    assert cosine is not None
    assert [cosine(s) for s in (0, 150, 300)] == pytest.approx([1.0, 0.5, 0.0])
    assert lr_multiplier("constant", 300) is None
    assert (Cifar10Task.schedule, DigitsTask.schedule) == ("step", "cosine")
    with pytest.raises(ValueError, match="unknown schedule 'linear'; accepted values: constant"):
        lr_multiplier("linear", 10)


def test_resnet18_shape_and_size() -> None:
    model = ResNet18()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_crop_flip_moves_pixels_and_keeps_shape() -> None:
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    out = augment_crop_flip(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    unshifted = augment_crop_flip(images, torch.Generator().manual_seed(0), padding=0)
    for original, augmented in zip(images, unshifted, strict=True):
        assert torch.equal(augmented, original) or torch.equal(augmented, original.flip(-1))


def test_unknown_and_non_training_tasks() -> None:
    with pytest.raises(ValueError, match="run `torch-lookahead nqm`"):
        get_task("nqm")
    with pytest.raises(
        ValueError,
        match="accepted values: charlm, charlm-transformer, charlm-transformer-postln, cifar10, "
        "digits",
    ):
        get_task("imagenet")


# What the committed reports were run with: torch's classes and the lab's keyword arguments.
LAB_MEANING = {
    "sgd": (torch.optim.SGD, {"momentum": 0.9}),
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {"weight_decay": 0.01}),
    "radam": (torch.optim.RAdam, {}),
}


@pytest.mark.parametrize("name", sorted(LAB_MEANING))
def test_lab_names_build_what_the_reports_ran(name: str) -> None:
    optimizer_class, kwargs = LAB_MEANING[name]
    params = [torch.nn.Parameter(torch.zeros(3))]
    expected = optimizer_class(params, lr=0.02, **kwargs)
    plain = build_optimizer(params, name, 0.02)
    assert type(plain) is optimizer_class and plain.defaults == expected.defaults
    wrapped = build_optimizer(params, name, 0.02, k=7, alpha=0.3)
    assert isinstance(wrapped, Lookahead) and type(wrapped.optimizer) is optimizer_class
    inner_defaults = {
        key: value
        for key, value in wrapped.optimizer.defaults.items()
        if not key.startswith("lookahead_")  # Lookahead records k and alpha there too
    }
    assert inner_defaults == expected.defaults
    assert wrapped.param_groups[0]["lookahead_k"] == 7
    assert wrapped.param_groups[0]["lookahead_alpha"] == 0.3


def test_overrides_replace_the_lab_defaults() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    overridden = build_optimizer(params, "adamw", 0.01, overrides={"weight_decay": 0.5})
    assert overridden.param_groups[0]["weight_decay"] == 0.5
    momentum_off = build_optimizer(
        params, "sgd", 1.0, overrides=CharLMTask.optimizer_overrides["sgd"]
    )
    assert momentum_off.param_groups[0]["momentum"] == 0.0
    with pytest.raises(ValueError, match="k and alpha must both be given"):
        build_optimizer(params, "sgd", 0.1, k=5)


def test_the_lab_accepts_the_registry_names_without_the_prefix() -> None:
    names = available_inner_optimizers()
    assert {"sgd", "momentum", "adam", "adamw", "radam", "novograd", "adabound", "ranger"} <= set(
        names
    )
    assert not any(name.startswith("lookahead_") for name in names)
    params = [torch.nn.Parameter(torch.zeros(3))]
    wrapped = build_optimizer(params, "novograd", 0.01, k=5, alpha=0.5)
    assert isinstance(wrapped, Lookahead)
    assert type(wrapped.optimizer).__name__ == "NovoGrad"
    assert type(build_optimizer(params, "ranger", 0.01)).__name__ == "Ranger"
    with pytest.raises(ValueError, match="'ranger' cannot be wrapped in Lookahead"):
        build_optimizer(params, "ranger", 0.01, k=5, alpha=0.5)
    with pytest.raises(ValueError, match="unknown inner optimizer 'lookahead_adamw'; accepted"):
        build_optimizer(params, "lookahead_adamw", 0.01)
    with pytest.raises(
        ValueError, match=r"unknown inner optimizer 'lion'; accepted values: .*adamw"
    ):
        build_optimizer(params, "lion", 0.01)


def test_lr_ranges_and_lists() -> None:
    assert parse_lr_range("1e-4:1e-1:4") == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    assert parse_lr_range("0.1,0.3") == [0.1, 0.3]
    assert parse_int_list("5,10, 20", "k") == [5, 10, 20]
    assert parse_float_list("0.5,0.8", "alpha") == [0.5, 0.8]
    for bad in ("1e-1:1e-4:3", "0:1:3", "1e-3:1e-1:1", "a:b:c", "1:2", "0.1,-1"):
        with pytest.raises(ValueError, match="lr"):
            parse_lr_range(bad)
    with pytest.raises(ValueError, match="k must be a comma-separated list of integers"):
        parse_int_list("5,x", "k")


def test_plans() -> None:
    compare = compare_configs("digits", ["sgd", "adamw"], 3, TINY, k=6, alpha=0.4)
    assert len(compare) == 12
    assert sum(c.k == 6 and c.alpha == 0.4 for c in compare) == 6
    assert {c.lr for c in compare if c.inner == "sgd"} == {DigitsTask().learning_rate("sgd")}
    sweep = lr_sweep_configs("digits", {"adamw": [1e-3, 1e-2]}, 2, TINY)
    assert sorted({c.lr for c in sweep}) == [1e-3, 1e-2] and len(sweep) == 8
    grid = k_alpha_configs("digits", "sgd", [5, 10], [0.5, 0.8], 2, TINY)
    assert len(grid) == 2 * (1 + 4)
    assert sum(c.k is None for c in grid) == 2


@pytest.mark.slow  # seconds of training: the suite keeps under 2 minutes on 2 cores
def test_a_cifar10_run_trains_resnet18_with_lookahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch_lookahead_lab.runner import make_config, run

    write_fake_cifar10(tmp_path, per_batch=20)
    trust_fake_cifar10(tmp_path, monkeypatch)
    settings = TaskSettings(steps=3, eval_every=3, batch_size=4)
    config = make_config(
        "cifar10", "sgd", seed=0, settings=settings, k=2, alpha=0.5, data_dir=str(tmp_path)
    )
    result = run(config)
    assert result.steps == [0, 3] and result.diverged_at is None
    assert set(result.history) == {
        "train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy"
    }  # fmt: skip
    assert result.history == run(config).history
