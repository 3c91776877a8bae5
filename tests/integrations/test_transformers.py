"""Lookahead under transformers.Trainer, on a tiny BERT built from a config (nothing downloaded):
``optimizers=(Lookahead(...), scheduler)``, ``optimizer_cls_and_kwargs``, evaluation on the slow
weights through the optimizer's ``eval()``/``train()``, exact resume from a checkpoint folder
(the Trainer reloads ``optimizer.pt`` with ``weights_only=True``), and through
TransformersSlowWeightsCallback and LookaheadTrainer: checkpoints, every export after training
(``save_model``, ``save_pretrained``, ``torch.save``) and the best model holding the slow weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from tests._slow import slow_weights_of  # noqa: E402
from tests.integrations._tensors import assert_same, parameters_of  # noqa: E402
from torch_lookahead import Lookahead  # noqa: E402
from torch_lookahead.integrations import unwrap_lookahead  # noqa: E402
from torch_lookahead.integrations.transformers import (  # noqa: E402
    LookaheadTrainer,
    TransformersSlowWeightsCallback,
)

pytestmark = pytest.mark.integrations

K, ALPHA, LR = 2, 0.5, 1e-2
SAMPLES, BATCH, SEQUENCE = 24, 4, 8
MAX_STEPS = SAMPLES // BATCH  # 6: one epoch
EVAL_EVERY = 3  # with k=2, step 3 is mid-cycle: slow and fast weights differ


class TinyTextDataset(torch.utils.data.Dataset[dict[str, Tensor]]):
    def __init__(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(0, 64, (SAMPLES, SEQUENCE), generator=gen)
        self.labels = (self.input_ids.sum(dim=1) % 2).long()

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": torch.ones(SEQUENCE, dtype=torch.long),
            "labels": self.labels[index],
        }


def _tiny_bert() -> Any:
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def _arguments(
    output_dir: Path, *, evaluate: bool, save: bool | None = None, **overrides: Any
) -> Any:
    """Evaluate (and by default save) every EVAL_EVERY steps, or neither."""
    every = {"eval_strategy": "steps", "eval_steps": EVAL_EVERY} if evaluate else {}
    save = evaluate if save is None else save
    settings = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": BATCH,
        "per_device_eval_batch_size": SAMPLES,
        "max_steps": MAX_STEPS,
        "learning_rate": LR,
        "lr_scheduler_type": "linear",
        "save_strategy": "steps" if save else "no",
        "save_steps": EVAL_EVERY,
        "logging_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    return transformers.TrainingArguments(**(settings | every | overrides))


class WeightsRecorder(transformers.TrainerCallback):  # type: ignore[misc]
    """Snapshots the slow weights after each optimizer step and the parameters evaluation sees."""

    def __init__(self, optimizer: Lookahead) -> None:
        self.optimizer = optimizer
        self.slow_after_step: dict[int, list[Tensor]] = {}
        self.fast_after_step: dict[int, list[Tensor]] = {}
        self.seen_by_evaluation: dict[int, list[Tensor]] = {}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.slow_after_step[state.global_step] = [
            s.clone() for s in slow_weights_of(self.optimizer)
        ]
        self.fast_after_step[state.global_step] = parameters_of(kwargs["model"])

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs["model"]
        self.seen_by_evaluation.setdefault(state.global_step, parameters_of(model))


@dataclass
class TrainerRun:
    model: Any
    optimizer: Lookahead
    recorder: WeightsRecorder
    output_dir: Path
    trainer: Any = field(repr=False)


def _run(
    output_dir: Path,
    *,
    evaluate: bool,
    resume_from: Path | None = None,
    trainer_cls: Any = None,
    callbacks: tuple[Any, ...] = (),
    **arguments: Any,
) -> TrainerRun:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = _tiny_bert()
    # weight_decay=0.0: what the Trainer gives both of its groups with the default arguments.
    adamw = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    optimizer = Lookahead(adamw, k=K, alpha=ALPHA)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, 0, MAX_STEPS)
    recorder = WeightsRecorder(optimizer)
    trainer = (trainer_cls or transformers.Trainer)(
        model=model,
        args=_arguments(output_dir, evaluate=evaluate, **arguments),
        train_dataset=TinyTextDataset(seed=1),
        eval_dataset=TinyTextDataset(seed=2),
        optimizers=(optimizer, schedule),
        callbacks=[recorder, *callbacks],
    )
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return TrainerRun(model, optimizer, recorder, output_dir, trainer)


def _run_loading_the_best(output_dir: Path, **arguments: Any) -> TrainerRun:
    # greater_is_better ranks the highest loss first, so that the best checkpoint is not the last:
    # a model left on the last slow weights would show.
    return _run(
        output_dir,
        evaluate=True,
        eval_steps=2,
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=True,
        **arguments,
    )


@pytest.fixture(scope="module")
def without_evaluation(tmp_path_factory: pytest.TempPathFactory) -> TrainerRun:
    return _run(tmp_path_factory.mktemp("plain"), evaluate=False)


@pytest.fixture(scope="module")
def with_evaluation(tmp_path_factory: pytest.TempPathFactory) -> TrainerRun:
    return _run(tmp_path_factory.mktemp("evaluated"), evaluate=True)


def test_evaluation_sees_the_slow_weights(with_evaluation: TrainerRun) -> None:
    recorder = with_evaluation.recorder
    assert sorted(recorder.seen_by_evaluation) == [EVAL_EVERY, 2 * EVAL_EVERY]
    seen = recorder.seen_by_evaluation[EVAL_EVERY]
    slow = recorder.slow_after_step[EVAL_EVERY]
    # slow_weights_of() is in param-group order, which is model.parameters() order here.
    assert_same(seen, slow)
    # Mid-cycle the fast weights differ from the slow ones, so evaluation did not see them.
    fast = recorder.fast_after_step[EVAL_EVERY]
    assert any(not torch.equal(a, b) for a, b in zip(seen, fast, strict=True))


def test_evaluating_on_slow_weights_leaves_training_unchanged(
    with_evaluation: TrainerRun, without_evaluation: TrainerRun
) -> None:
    """The Trainer calls optimizer.train() before each step: the fast weights come back exactly."""
    assert with_evaluation.recorder.seen_by_evaluation  # it did evaluate, mid-cycle
    assert_same(parameters_of(with_evaluation.model), parameters_of(without_evaluation.model))
    assert with_evaluation.trainer.state.global_step == MAX_STEPS


def test_linear_schedule_reaches_the_inner_optimizer(without_evaluation: TrainerRun) -> None:
    inner_lr = without_evaluation.optimizer.optimizer.param_groups[0]["lr"]
    assert inner_lr == pytest.approx(0.0, abs=1e-12)  # linear decay to 0 at max_steps
    assert without_evaluation.optimizer.param_groups[0]["lookahead_step"] == MAX_STEPS % K


def test_resume_from_checkpoint_folder_continues_exactly(
    with_evaluation: TrainerRun, tmp_path: Path
) -> None:
    checkpoint = with_evaluation.output_dir / f"checkpoint-{EVAL_EVERY}"
    # The Trainer saved right after evaluating: optimizer.pt is written in eval mode.
    optimizer_state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert all("lookahead_fast" in s for s in optimizer_state["state"].values())
    assert all(group["lookahead_eval_mode"] for group in optimizer_state["param_groups"])

    resumed = _run(tmp_path, evaluate=True, resume_from=checkpoint)

    assert resumed.trainer.state.global_step == MAX_STEPS
    assert_same(parameters_of(resumed.model), parameters_of(with_evaluation.model))
    assert_same(slow_weights_of(resumed.optimizer), slow_weights_of(with_evaluation.optimizer))


class LookaheadAdamW(Lookahead):
    """The optimizer class the Trainer instantiates as ``cls(grouped_params, **kwargs)``."""

    def __init__(self, params: Any, **adamw_kwargs: Any) -> None:
        super().__init__(torch.optim.AdamW(params, **adamw_kwargs), k=K, alpha=ALPHA)


def _train_with_optimizer_cls(output_dir: Path, optimizer_cls: Any) -> tuple[Any, Any]:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = _tiny_bert()
    trainer = transformers.Trainer(
        model=model,
        args=_arguments(output_dir, evaluate=False),
        train_dataset=TinyTextDataset(seed=1),
        optimizer_cls_and_kwargs=(optimizer_cls, {"lr": LR}),
    )
    trainer.train()
    return model, trainer


def test_optimizer_cls_and_kwargs_builds_a_lookahead(
    without_evaluation: TrainerRun, tmp_path: Path
) -> None:
    model, trainer = _train_with_optimizer_cls(tmp_path, LookaheadAdamW)

    optimizer = unwrap_lookahead(trainer.optimizer)
    assert isinstance(optimizer, LookaheadAdamW)
    # The Trainer's weight-decay / no-decay split reaches the inner optimizer as two groups.
    assert len(optimizer.optimizer.param_groups) == 2
    assert all(group["lookahead_k"] == K for group in optimizer.param_groups)
    # Same data, init, schedule and update rule as the optimizers=(...) run: same weights.
    assert_same(parameters_of(model), parameters_of(without_evaluation.model))


def test_optimizer_cls_and_kwargs_accepts_lookahead_wrap(tmp_path: Path) -> None:
    _, trainer = _train_with_optimizer_cls(tmp_path, Lookahead.wrap(torch.optim.AdamW, k=K))
    assert isinstance(unwrap_lookahead(trainer.optimizer), Lookahead)


def test_unwrap_lookahead_reaches_it_through_the_accelerated_optimizer(
    without_evaluation: TrainerRun,
) -> None:
    wrapper = without_evaluation.trainer.optimizer
    assert wrapper is not without_evaluation.optimizer  # Accelerate's AcceleratedOptimizer
    assert not hasattr(wrapper, "slow_weights")
    assert unwrap_lookahead(wrapper) is without_evaluation.optimizer


# ---------------------------------------------------------------------- the slow-weights policy
def _model_file(folder: Path, model: Any) -> list[Tensor]:
    """The parameters in a folder's model.safetensors, in ``model.parameters()`` order."""
    saved = load_file(str(folder / "model.safetensors"))
    return [saved[name] for name, _ in model.named_parameters()]


def _in_eval_mode(optimizer: Lookahead) -> bool:
    return any(group.get("lookahead_eval_mode", False) for group in optimizer.param_groups)


def _fast_weights(optimizer: Lookahead) -> list[Tensor]:
    """θ: the parameters in train mode, ``lookahead_fast`` in eval mode (docs/design.md)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not optimizer.in_eval_mode:
        return [p.detach().clone() for p in params]
    return [optimizer.state[p]["lookahead_fast"].clone() for p in params]


@pytest.fixture(scope="module")
def slow_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> TrainerRun:
    """Checkpoints every EVAL_EVERY steps, no evaluation, with the callback on a plain Trainer."""
    return _run(
        tmp_path_factory.mktemp("slow-checkpoints"),
        evaluate=False,
        save=True,
        callbacks=(TransformersSlowWeightsCallback(),),
    )


def test_checkpoints_without_evaluation_hold_the_slow_weights(
    slow_checkpoints: TrainerRun,
) -> None:
    recorder = slow_checkpoints.recorder
    assert not recorder.seen_by_evaluation
    for step in (EVAL_EVERY, MAX_STEPS):
        folder = slow_checkpoints.output_dir / f"checkpoint-{step}"
        assert_same(_model_file(folder, slow_checkpoints.model), recorder.slow_after_step[step])
        optimizer_state = torch.load(folder / "optimizer.pt", weights_only=True)
        assert all(group["lookahead_eval_mode"] for group in optimizer_state["param_groups"])
        saved_fast = [
            optimizer_state["state"][i]["lookahead_fast"]
            for i in range(len(recorder.fast_after_step[step]))
        ]
        assert_same(saved_fast, recorder.fast_after_step[step])
    # Step 3 is mid-cycle: the model files do not hold the fast weights.
    step = EVAL_EVERY
    assert any(
        not torch.equal(a, b)
        for a, b in zip(recorder.slow_after_step[step], recorder.fast_after_step[step], strict=True)
    )


def test_saving_slow_checkpoints_leaves_training_unchanged_and_ends_on_the_slow_weights(
    slow_checkpoints: TrainerRun, without_evaluation: TrainerRun
) -> None:
    assert_same(_fast_weights(slow_checkpoints.optimizer), parameters_of(without_evaluation.model))
    slow = slow_weights_of(without_evaluation.optimizer)
    assert_same(slow_weights_of(slow_checkpoints.optimizer), slow)
    assert _in_eval_mode(slow_checkpoints.optimizer)
    assert_same(parameters_of(slow_checkpoints.model), slow)


def test_resume_from_a_slow_checkpoint_continues_exactly(
    slow_checkpoints: TrainerRun, without_evaluation: TrainerRun, tmp_path: Path
) -> None:
    checkpoint = slow_checkpoints.output_dir / f"checkpoint-{EVAL_EVERY}"  # mid-cycle
    resumed = _run(
        tmp_path,
        evaluate=False,
        save=True,
        resume_from=checkpoint,
        callbacks=(TransformersSlowWeightsCallback(),),
    )
    assert resumed.trainer.state.global_step == MAX_STEPS
    assert_same(parameters_of(resumed.model), parameters_of(without_evaluation.model))
    assert_same(slow_weights_of(resumed.optimizer), slow_weights_of(without_evaluation.optimizer))


def test_training_that_ends_with_an_evaluation_ends_on_the_slow_weights(
    with_evaluation: TrainerRun, tmp_path: Path
) -> None:
    run = _run(tmp_path, evaluate=True, callbacks=(TransformersSlowWeightsCallback(),))
    assert _in_eval_mode(run.optimizer)
    assert_same(parameters_of(run.model), slow_weights_of(with_evaluation.optimizer))
    assert_same(_fast_weights(run.optimizer), _fast_weights(with_evaluation.optimizer))


MID_CYCLE_END = MAX_STEPS - 1  # with k=2, training that stops here ends mid-cycle


def test_every_export_after_training_with_the_callback_holds_the_slow_weights(
    tmp_path: Path,
) -> None:
    """A plain Trainer with the callback: save_model, save_pretrained and torch.save."""
    run = _run(
        tmp_path / "run",
        evaluate=False,
        callbacks=(TransformersSlowWeightsCallback(),),
        max_steps=MID_CYCLE_END,
    )
    slow = slow_weights_of(run.optimizer)
    assert any(
        not torch.equal(a, b) for a, b in zip(slow, _fast_weights(run.optimizer), strict=True)
    )
    run.trainer.save_model(str(tmp_path / "save-model"))
    run.model.save_pretrained(tmp_path / "save-pretrained")
    torch.save(run.model.state_dict(), tmp_path / "state-dict.pt")
    assert_same(_model_file(tmp_path / "save-model", run.model), slow)
    assert_same(_model_file(tmp_path / "save-pretrained", run.model), slow)
    state = torch.load(tmp_path / "state-dict.pt", weights_only=True)
    assert_same([state[name] for name, _ in run.model.named_parameters()], slow)


def test_a_plain_trainer_exports_the_parameters_as_they_are(tmp_path: Path) -> None:
    """Without the callback, save_model writes the fast weights after training that ended on a
    training step, the slow ones after an evaluation (the documentation says: use the callback)."""
    run = _run(tmp_path / "run", evaluate=False, max_steps=MID_CYCLE_END)
    fast, slow = parameters_of(run.model), slow_weights_of(run.optimizer)
    assert any(not torch.equal(a, b) for a, b in zip(slow, fast, strict=True))
    run.trainer.save_model(str(tmp_path / "after-training"))
    run.trainer.evaluate()
    run.trainer.save_model(str(tmp_path / "after-evaluation"))
    assert_same(_model_file(tmp_path / "after-training", run.model), fast)
    assert_same(_model_file(tmp_path / "after-evaluation", run.model), slow)


def test_a_plain_trainer_loading_the_best_model_warns_before_train_overwrites_it(
    tmp_path: Path,
) -> None:
    """Without LookaheadTrainer, load_best_model_at_end loads the best model while the optimizer is
    in eval mode: a later optimizer.train() puts the last fast weights over it, with a warning that
    names the fix (issue 25, flow 6)."""
    run = _run_loading_the_best(tmp_path)
    best_weights = _model_file(Path(run.trainer.state.best_model_checkpoint), run.model)
    assert_same(parameters_of(run.model), best_weights)
    with pytest.warns(UserWarning, match="written in eval mode.*LookaheadTrainer"):
        run.optimizer.train()
    assert any(
        not torch.equal(a, b) for a, b in zip(parameters_of(run.model), best_weights, strict=True)
    )


def test_lookahead_trainer_save_model_writes_the_slow_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run(
        tmp_path / "run", evaluate=False, trainer_cls=LookaheadTrainer, max_steps=MID_CYCLE_END
    )
    slow, fast = slow_weights_of(run.optimizer), _fast_weights(run.optimizer)
    assert any(not torch.equal(a, b) for a, b in zip(slow, fast, strict=True))

    run.optimizer.train()  # save_model writes the slow weights in either mode
    run.trainer.save_model(str(tmp_path / "export"))
    assert_same(_model_file(tmp_path / "export", run.model), slow)
    assert_same(parameters_of(run.model), fast)  # ...and leaves the mode as it was
    assert not _in_eval_mode(run.optimizer)
    # The exported folder loads as a plain model: the slow one.
    exported = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "export")
    assert_same(parameters_of(exported), slow)
    # A plain Trainer writes the parameters as they are, the fast weights here.
    transformers.Trainer.save_model(run.trainer, str(tmp_path / "plain"))
    assert_same(_model_file(tmp_path / "plain", run.model), fast)

    # A save_model that fails (a full disk) leaves the mode as it was.
    def failing_save(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.Trainer, "_save", failing_save)
    for to_mode in (run.optimizer.train, run.optimizer.eval):
        to_mode()
        mode, parameters = _in_eval_mode(run.optimizer), parameters_of(run.model)
        with pytest.raises(OSError, match="No space left"):
            run.trainer.save_model(str(tmp_path / "full-disk"))
        assert _in_eval_mode(run.optimizer) == mode
        assert_same(parameters_of(run.model), parameters)


def test_evaluate_and_predict_agree_on_the_slow_weights(tmp_path: Path) -> None:
    run = _run(tmp_path, evaluate=False, trainer_cls=LookaheadTrainer, max_steps=MID_CYCLE_END)
    slow, fast = slow_weights_of(run.optimizer), _fast_weights(run.optimizer)
    evaluated = run.trainer.evaluate()["eval_loss"]
    predicted = run.trainer.predict(TinyTextDataset(seed=2)).metrics["test_loss"]
    assert evaluated == predicted
    assert_same(run.recorder.seen_by_evaluation[MID_CYCLE_END], slow)
    assert any(not torch.equal(a, b) for a, b in zip(slow, fast, strict=True))


def test_load_best_model_at_end_gives_the_best_checkpoint_and_its_score(tmp_path: Path) -> None:
    run = _run_loading_the_best(tmp_path, trainer_cls=LookaheadTrainer)
    state = run.trainer.state
    best = Path(state.best_model_checkpoint)
    assert best.name != f"checkpoint-{MAX_STEPS}"
    best_weights = _model_file(best, run.model)
    assert_same(parameters_of(run.model), best_weights)
    assert_same(slow_weights_of(run.optimizer), best_weights)
    assert_same(_fast_weights(run.optimizer), best_weights)
    assert run.trainer.evaluate()["eval_loss"] == state.best_metric
    run.trainer.save_model(str(tmp_path / "export"))
    assert_same(_model_file(tmp_path / "export", run.model), best_weights)
    run.optimizer.train()  # the last fast weights are gone: the best model stays
    assert_same(parameters_of(run.model), best_weights)


def test_lookahead_trainer_resumes_again_after_training(
    without_evaluation: TrainerRun, tmp_path: Path
) -> None:
    """Training ends on the slow weights; a second train(resume_from_checkpoint=...) of the same
    Trainer loads its optimizer state all the same."""
    run = _run(tmp_path, evaluate=False, save=True, trainer_cls=LookaheadTrainer)
    assert _in_eval_mode(run.optimizer)
    run.trainer.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{EVAL_EVERY}"))
    assert_same(_fast_weights(run.optimizer), parameters_of(without_evaluation.model))
    assert_same(slow_weights_of(run.optimizer), slow_weights_of(without_evaluation.optimizer))
