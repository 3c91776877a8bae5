"""One run is a pure function of its configuration; many runs share a cache on disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from torch_lookahead_lab import provenance, runner
from torch_lookahead_lab.nqm import NQMProblem, nqm_configs, nqm_point
from torch_lookahead_lab.runner import RunConfig, RunResult, make_config, run, run_many
from torch_lookahead_lab.tasks import TaskSettings

TINY = TaskSettings(steps=12, eval_every=4, batch_size=16)


def config(**changes: object) -> RunConfig:
    base = make_config("digits", "sgd", seed=0, settings=TINY, k=5, alpha=0.5)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [None, 5])
def test_same_seed_same_numbers(k: int | None) -> None:
    first = run(config(k=k, alpha=0.5 if k else None))
    second = run(config(k=k, alpha=0.5 if k else None))
    assert first.steps == second.steps == [0, 4, 8, 12]
    assert first.history == second.history
    assert set(first.history) == {
        "train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy"
    }  # fmt: skip


def test_the_schedule_is_the_tasks_unless_asked_and_it_changes_the_run() -> None:
    assert config().schedule == "cosine"
    constant = config(schedule="constant")
    assert run(constant).history != run(config()).history
    with pytest.raises(ValueError, match="unknown schedule"):
        make_config("digits", "sgd", seed=0, settings=TINY, schedule="linear")


def test_another_seed_other_numbers() -> None:
    assert run(config(seed=0)).history != run(config(seed=1)).history


def test_lookahead_runs_are_evaluated_on_the_slow_weights() -> None:
    # With k beyond the run's length the slow weights never move from the initial weights,
    # so every evaluation must equal the one at step 0, although the fast weights trained.
    frozen = run(config(k=1000))
    assert all(v == frozen.history["train_loss"][0] for v in frozen.history["train_loss"])
    trained = run(config(k=None, alpha=None))
    assert trained.history["train_loss"][0] == frozen.history["train_loss"][0]
    assert trained.history["train_loss"][-1] != frozen.history["train_loss"][0]


def test_a_diverging_run_stops_and_says_where() -> None:
    result = run(config(k=None, alpha=None, inner="adamw", lr=1e30, steps=40, eval_every=40))
    assert result.diverged_at is not None and result.diverged_at <= 40
    assert result.steps[-1] == result.diverged_at
    assert result.history["train_loss"][-1] is None


def test_the_key_covers_every_field() -> None:
    base = config()
    assert base.key() == config().key()
    for name, value in [("lr", 0.07), ("seed", 3), ("k", 6), ("alpha", 0.8), ("steps", 13),
                        ("eval_every", 3), ("batch_size", 8), ("inner", "adamw"),
                        ("device", "meta"), ("data_dir", "/x"), ("schedule", "step"),
                        ("unsafe_skip_checksums", True)]:  # fmt: skip
        assert dataclasses.replace(base, **{name: value}).key() != base.key(), name


def test_a_change_of_the_library_or_the_lab_invalidates_cached_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lab is its own package, but the library trains every run: the cache key hashes the
    sources of both, and a presentation-only module of the lab changes neither number."""
    import torch_lookahead
    import torch_lookahead_lab

    library, lab = provenance.source_roots()
    assert library == Path(torch_lookahead.__file__).resolve().parent
    assert lab == Path(torch_lookahead_lab.__file__).resolve().parent

    def sources(name: str, **changed: str) -> tuple[Path, Path]:
        """A copy of a few modules of both packages under tmp_path/name, ``changed`` (a module
        name: its new text) applied."""
        copies = (tmp_path / name / "torch_lookahead", tmp_path / name / "torch_lookahead_lab")
        modules = (("__init__.py", "lookahead.py"), ("runner.py", "report.py"))
        for source, copy, names in zip((library, lab), copies, modules, strict=True):
            copy.mkdir(parents=True)
            for module in names:
                text = changed.get(module.removesuffix(".py"))
                target = copy / module
                target.write_bytes(
                    text.encode() if text is not None else (source / module).read_bytes()
                )
        return copies

    def key_with(roots: tuple[Path, Path]) -> str:
        monkeypatch.setattr(provenance, "source_roots", lambda: roots)
        return config().key()

    before = key_with(sources("before"))
    assert key_with(sources("presentation", report="# presentation only\n")) == before
    core = key_with(sources("core", lookahead="# the core changed\n"))
    lab_runner = key_with(sources("lab", runner="# the lab's runner changed\n"))
    assert len({before, core, lab_runner}) == 3


def test_results_survive_json() -> None:
    result = run(config())
    assert RunResult.from_json(result.to_json()) == result


def test_run_many_reuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = [config(seed=0), config(seed=1), config(seed=0)]
    seen: list[bool] = []
    first = run_many(configs, tmp_path, workers=1, on_result=lambda r, cached: seen.append(cached))
    assert seen == [False, False]
    assert [r.config for r in first] == configs
    assert len(list(tmp_path.glob("*.json"))) == 2

    def must_not_run(config: RunConfig) -> RunResult:
        raise AssertionError("a cached run was recomputed")

    monkeypatch.setattr(runner, "run", must_not_run)
    seen.clear()
    second = run_many(configs, tmp_path, workers=1, on_result=lambda r, cached: seen.append(cached))
    assert seen == [True, True]
    assert second == first


def test_a_process_pool_computes_what_this_process_computes(tmp_path: Path) -> None:
    """One pool (spawning one is the slow part) for runs and NQM points, with 2 threads each."""
    problem = NQMProblem((1.0, 0.5), (1.0, 0.5))
    points = nqm_configs(problem, [0.5, 1.0], chains=20, burn_in_steps=20, measured_steps=20)
    configs = [config(seed=0), config(seed=1, k=None, alpha=None)]
    in_pool = run_many([*configs, *points], tmp_path, workers=2, threads=2)
    # The same number of threads here: rounding in torch's kernels may depend on it.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        here = [run(c) for c in configs] + [nqm_point(p) for p in points]
    finally:
        torch.set_num_threads(previous)
    assert in_pool == here
    assert [r.threads for r in in_pool[:2]] == [2, 2]
    seen: list[bool] = []
    assert (
        run_many(points, tmp_path, on_result=lambda r, cached: seen.append(cached)) == in_pool[2:]
    )
    assert seen == [True, True]


def test_runs_in_this_process_use_the_threads_asked_for_and_give_them_back() -> None:
    before = torch.get_num_threads()
    assert run_many([config(steps=4)], None, workers=1, threads=3)[0].threads == 3
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": -1.0}, "lr must be"),
        ({"lr": float("nan")}, "lr must be"),
        ({"k": 0}, "k must be a positive int"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
        ({"alpha": float("nan")}, r"alpha must be in \[0, 1\]"),
    ],
)
def test_make_config_rejects_bad_hyper_parameters(changes: dict[str, float], message: str) -> None:
    arguments = {"lr": 0.1, "k": 5, "alpha": 0.5} | changes
    with pytest.raises(ValueError, match=message):
        make_config("digits", "sgd", seed=0, settings=TINY, **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_make_config_accepts_what_lookahead_accepts(alpha: float) -> None:
    made = make_config("digits", "sgd", seed=0, settings=TINY, k=1, alpha=alpha)
    assert (made.k, made.alpha) == (1, alpha)


def test_make_config_rejects_unknown_names() -> None:
    with pytest.raises(
        ValueError,
        match="unknown task 'mnist'; accepted values: charlm, charlm-transformer, "
        "charlm-transformer-postln, cifar10",
    ):
        make_config("mnist", "sgd", seed=0, settings=TINY)
    with pytest.raises(ValueError, match="unknown inner optimizer 'lion'; accepted values:"):
        make_config("digits", "lion", seed=0, settings=TINY)
    make_config("digits", "ranger", seed=0, settings=TINY)
    with pytest.raises(ValueError, match="'ranger' cannot be wrapped in Lookahead"):
        make_config("digits", "ranger", seed=0, settings=TINY, k=5, alpha=0.5)


def test_a_charlm_run_measures_its_test_split_at_its_ends_only_when_asked() -> None:
    """``evaluate_test``: the test metrics at step 0 and at the last evaluation, None between;
    every other number is the run without it, whose stored configuration has no such field
    (committed runs keep theirs), and the data fingerprint then covers the test bytes."""
    settings = TaskSettings(steps=6, eval_every=2, batch_size=4)
    plain = make_config("charlm", "adamw", seed=3, settings=settings, k=5, alpha=0.5)
    tested = make_config(
        "charlm", "adamw", seed=3, settings=settings, k=5, alpha=0.5, evaluate_test=True
    )
    assert "evaluate_test" not in plain.to_dict() and tested.to_dict()["evaluate_test"] is True
    assert RunConfig(**plain.to_dict()) == plain and plain.key() != tested.key()
    assert plain.data_fingerprint != tested.data_fingerprint
    without, with_test = run(plain), run(tested)
    assert with_test.steps == without.steps == [0, 2, 4, 6]
    test_bpc = with_test.history.pop("test_bpc")
    test_loss = with_test.history.pop("test_loss")
    assert with_test.history == without.history
    for values in (test_bpc, test_loss):
        assert values[1:-1] == [None, None] and None not in (values[0], values[-1])
    assert test_bpc[-1] < test_bpc[0]  # trained on the training bytes, better on unseen ones
    with pytest.raises(ValueError, match="evaluate_test is for tasks"):
        make_config("digits", "sgd", seed=0, settings=TINY, evaluate_test=True)


def test_a_charlm_run_of_another_standard_library_is_refused() -> None:
    """charlm's text is the running Python's standard library: a recorded run whose corpus
    fingerprint differs (another Python version) is refused before training, naming both."""
    config = make_config("charlm", "adamw", seed=0, settings=TaskSettings(2, 2, 2))
    other = dataclasses.replace(config, data_fingerprint="0123456789abcdef")
    with pytest.raises(ValueError, match=r"0123456789abcdef.*another Python version"):
        run(other)
