"""The state model of docs/design.md: one regression test per defect of issue 21.

Each operation that changes tensors completes or is finished by the next call with the result of
one uninterrupted call; tensors are named by what they hold; no heuristic drops state.
"""

from __future__ import annotations

import copy as copy_module
import logging
import re
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tests._slow import slow_weights_of
from tests._torch_versions import traces_the_core_without_breaks
from torch_lookahead import Lookahead
from torch_lookahead.integrations.migrate import convert_timm_state_dict

K = 3
ALPHA = 0.5


def params_of(seed: int = 0, dtypes: tuple[torch.dtype, ...] = (torch.float32,) * 3) -> list[Any]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, generator=gen).to(d)) for d in dtypes]


def grads(params: list[torch.nn.Parameter], step: int) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)


def run(params: list[Any], opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        grads(params, step)
        opt.step()


def values(tensors: list[Tensor]) -> list[Tensor]:
    return [t.detach().clone() for t in tensors]


def assert_equal(a: list[Tensor], b: list[Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y), (x, y)


def fail_copies_after(monkeypatch: pytest.MonkeyPatch, at: int, error: BaseException) -> None:
    """Make the ``at``-th copy kernel (a multi-tensor copy, or the concatenation that saves a block
    of 1-D tensors to scratch) raise ``error`` right after it has completed."""
    calls = [0]

    def failing(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            calls[0] += 1
            if calls[0] == at + 1:
                raise error
            return out

        return call

    monkeypatch.setattr(torch, "_foreach_copy_", failing(torch._foreach_copy_))
    monkeypatch.setattr(torch, "cat", failing(torch.cat))


def adamw(params: list[Any], **kwargs: Any) -> Lookahead:
    return Lookahead(torch.optim.AdamW(params, lr=0.05), k=K, alpha=ALPHA, **kwargs)


def sgd(params: list[Any], **kwargs: Any) -> Lookahead:
    return Lookahead(torch.optim.SGD(params, lr=0.1, momentum=0.9), k=K, alpha=ALPHA, **kwargs)


# ---------------------------------------------------------------- defect 1
def test_a_checkpoint_after_reset_slow_resumes_with_its_slow_weights(
    recwarn: pytest.WarningsRecorder,
) -> None:
    params = params_of()
    opt = adamw(params)
    run(params, opt, range(2 * K + 1))
    opt.reset_slow()
    run(params, opt, range(2 * K + 1, 2 * K + 3))  # within k steps of the reset
    saved = opt.state_dict()
    slow = values([opt.state[p]["lookahead_slow"] for p in params])
    fresh = adamw(params)
    fresh.load_state_dict(saved)
    assert not [w for w in recwarn if "Lookahead" in str(w.message)]
    assert_equal([fresh.state[p]["lookahead_slow"] for p in params], slow)


# ---------------------------------------------------------------- defects 2 and 6
@pytest.mark.parametrize("failing_call", range(3))
@pytest.mark.parametrize("how", ["eval", "slow_weights"])
def test_ctrl_c_during_the_swap_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, failing_call: int, how: str
) -> None:
    params = params_of()
    opt = sgd(params)
    run(params, opt, range(K + 1))  # mid-cycle: fast and slow differ
    fast = values(params)
    slow = values([opt.state[p]["lookahead_slow"] for p in params])
    fail_copies_after(monkeypatch, failing_call, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        if how == "eval":
            opt.eval()
        else:
            with opt.slow_weights():
                pass
    monkeypatch.undo()
    opt.eval()  # finishes the interrupted swap
    assert_equal(values(params), slow)
    assert_equal(slow_weights_of(opt), slow)
    opt.train()
    assert_equal(values(params), fast)
    assert_equal(slow_weights_of(opt), slow)


def test_eval_that_runs_out_of_memory_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    params = params_of(dtypes=(torch.float32, torch.float64, torch.float32))  # two buckets
    reference_params = params_of(dtypes=(torch.float32, torch.float64, torch.float32))
    opt, reference = sgd(params), sgd(reference_params)
    run(params, opt, range(K - 1))  # before the first sync: no scratch allocated yet
    run(reference_params, reference, range(K))
    fast = values(params)
    real_empty = torch.empty
    calls: list[int] = []

    def empty(*args: Any, **kwargs: Any) -> Tensor:
        calls.append(1)
        if len(calls) == 2:  # the second bucket's scratch
            raise torch.OutOfMemoryError("simulated")
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", empty)
    with pytest.raises(torch.OutOfMemoryError):
        opt.eval()
    monkeypatch.undo()
    assert not opt.in_eval_mode
    assert_equal(values(params), fast)
    grads(params, K - 1)
    opt.step()  # trains the fast weights, as the uninterrupted reference did
    assert_equal(values(params), values(reference_params))


# ---------------------------------------------------------------- defect 3
@pytest.mark.parametrize(
    ("saved_dtype", "loaded_dtype"), [(torch.float32, None), (None, torch.float32)]
)
def test_an_eval_form_checkpoint_resumes_under_another_slow_dtype(
    saved_dtype: torch.dtype | None, loaded_dtype: torch.dtype | None
) -> None:
    params = params_of(dtypes=(torch.bfloat16,) * 3)
    opt = sgd(params, slow_dtype=saved_dtype)
    run(params, opt, range(K + 1))
    fast = values(params)
    opt.eval()
    slow_in_model = values(params)
    saved = opt.state_dict()
    assert all("lookahead_fast" in s for s in saved["state"].values())

    model = [torch.nn.Parameter(t.clone()) for t in slow_in_model]  # the model file
    loaded = sgd(model, slow_dtype=loaded_dtype)
    loaded.load_state_dict(saved)
    assert loaded.in_eval_mode
    loaded.train()
    assert_equal(values(model), fast)
    assert_equal([s.to(torch.bfloat16) for s in slow_weights_of(loaded)], slow_in_model)
    run(model, loaded, range(K + 1, 2 * K))  # to the next sync, which places the slow copies
    expected = torch.float32 if loaded_dtype is torch.float32 else torch.bfloat16
    assert all(loaded.state[p]["lookahead_slow"].dtype == expected for p in model)


# ---------------------------------------------------------------- defect 4
# ---------------------------------------------------------------- defect 5
@pytest.mark.parametrize("failing_step", [0, K - 1])
def test_a_step_post_hook_that_raises_does_not_shift_the_cycle(failing_step: int) -> None:
    params, reference_params = params_of(), params_of()
    opt, reference = sgd(params), sgd(reference_params)
    first = values(params)
    fail = [True]

    def hook(*_: Any) -> None:
        if fail[0] and opt.param_groups[0]["lookahead_step"] == failing_step + 1:
            fail[0] = False  # raised once, after the inner step has been counted
            raise RuntimeError("a hook")

    opt.optimizer.register_step_post_hook(hook)
    for step in range(3 * K):
        grads(params, step)
        if step == failing_step:
            with pytest.raises(RuntimeError, match="a hook"):
                opt.step()
            if step == 0:  # the first-step capture is kept
                assert_equal([opt.state[p]["lookahead_slow"] for p in params], first)
        else:
            opt.step()
    run(reference_params, reference, range(3 * K))
    assert_equal(values(params), values(reference_params))


# ---------------------------------------------------------------- defect 7
@pytest.mark.parametrize("failing_call", range(2))  # the copies: work <- slow, fast <- slow
def test_a_sync_that_fails_after_its_lerp_is_not_applied_twice(
    monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    params, reference_params = params_of(), params_of()
    opt, reference = sgd(params), sgd(reference_params)
    run(params, opt, range(K - 1))
    run(reference_params, reference, range(K))
    fail_copies_after(monkeypatch, failing_call, RuntimeError("injected"))
    grads(params, K - 1)
    with pytest.raises(RuntimeError, match="injected"):
        opt.step()
    monkeypatch.undo()
    opt.sync()  # finishes the interrupted sync: not a second outer step
    reference.param_groups[0]["lookahead_step"] = 0
    assert_equal(values(params), values(reference_params))
    assert_equal(
        [opt.state[p]["lookahead_slow"] for p in params],
        [reference.state[p]["lookahead_slow"] for p in reference_params],
    )


def test_a_parameter_resized_through_data_is_refused_before_anything_changes() -> None:
    params = params_of()
    opt = sgd(params)
    run(params, opt, range(K - 1))
    params[1].data = torch.zeros(7)
    others = [params[0], params[2]]
    slow = values([opt.state[p]["lookahead_slow"] for p in others])
    for _ in range(3):  # every retry is refused the same way
        grads(params, K)
        with pytest.raises(ValueError, match="shape"):
            opt.step()
        assert_equal([opt.state[p]["lookahead_slow"] for p in others], slow)
    opt.reset_slow()  # the documented way out
    assert opt.state[params[1]]["lookahead_slow"].shape == (7,)


# ---------------------------------------------------------------- defect 8
def test_a_cleared_state_is_noticed_at_the_next_step_like_a_replaced_one() -> None:
    finals = []
    for how in ("clear", "replace"):
        params = params_of()
        opt = sgd(params)
        run(params, opt, range(K + 1))
        if how == "clear":
            opt.state[params[0]].clear()
        else:
            opt.state[params[0]] = {}
        run(params, opt, range(K + 1, 3 * K))
        finals.append(values(params))
    assert_equal(finals[0], finals[1])


@pytest.mark.parametrize("edit", ["clear", "replace", "reorder", "new group"])
def test_the_step_sees_state_edits_where_the_state_lists_the_parameters_in_order(
    edit: str,
) -> None:
    """``step()`` skips the per-parameter lookups only where the state lists exactly the
    parameters, in order, each with a slow copy; every edit of the state is still seen at the
    next step: a parameter without a slow copy gets one holding its value before that step."""
    params = params_of()
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=K, alpha=ALPHA)  # no momentum: the
    run(params, opt, range(K + 1))  # state holds only the slow copies, in parameter order
    assert list(opt.state) == params
    extra = torch.nn.Parameter(torch.ones(5))
    if edit == "clear":
        opt.state[params[0]].clear()
    elif edit == "replace":
        opt.state[params[0]] = {}
    elif edit == "reorder":  # the same entries in another order, one of them emptied
        entries = [opt.state.pop(p) for p in params]
        for p, entry in reversed(list(zip(params, entries, strict=True))):
            opt.state[p] = entry
        opt.state[params[0]].clear()
    else:
        opt.add_param_group({"params": [extra]})
        extra.grad = torch.ones(5)
    before = values([params[0], extra])
    grads(params, K + 1)
    opt.step()
    if edit == "new group":
        assert_equal([opt.state[extra]["lookahead_slow"]], before[1:])
    else:
        assert_equal([opt.state[params[0]]["lookahead_slow"]], before[:1])


# ---------------------------------------------------------------- defect 9
def test_a_sync_leaves_the_sigint_handler_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    params = params_of()
    opt = sgd(params)
    seen: list[Any] = []
    real = torch._foreach_lerp_

    def lerp(*args: Any, **kwargs: Any) -> Any:
        seen.append(signal.getsignal(signal.SIGINT))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_lerp_", lerp)
    run(params, opt, range(K))
    assert seen == [signal.getsignal(signal.SIGINT)]


def test_ctrl_c_during_a_sync_with_sig_dfl_stops_the_process(tmp_path: Any) -> None:
    script = textwrap.dedent(
        """
        import signal, torch
        from torch_lookahead import Lookahead
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        p = torch.nn.Parameter(torch.ones(3))
        opt = Lookahead(torch.optim.SGD([p], lr=0.1), k=1)
        real = torch._foreach_lerp_
        def lerp(*args, **kwargs):
            signal.raise_signal(signal.SIGINT)
            return real(*args, **kwargs)
        torch._foreach_lerp_ = lerp
        p.grad = torch.ones(3)
        opt.step()
        print("training went on")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert "training went on" not in result.stdout
    assert result.returncode == -signal.SIGINT


# ---------------------------------------------------------------- defect 10
@pytest.mark.parametrize("slow_dtype", [None, torch.float32])
def test_a_first_swap_under_inference_mode_does_not_poison_the_optimizer(
    slow_dtype: torch.dtype | None,
) -> None:
    params = params_of(dtypes=(torch.bfloat16,) * 3)
    opt = sgd(params, slow_dtype=slow_dtype)
    run(params, opt, range(K + 1))
    fast = values(params)
    with torch.inference_mode():
        opt.eval()
        opt.train()
        with opt.slow_weights():
            pass
    opt.eval()
    opt.train()
    assert_equal(values(params), fast)
    opt.state_dict()
    run(params, opt, range(K + 1, 2 * K))


# ---------------------------------------------------------------- defect 11
def test_rewrapping_says_which_k_and_alpha_the_groups_keep() -> None:
    params = params_of()
    inner = torch.optim.SGD(params, lr=0.1)
    first = Lookahead(inner, k=5, alpha=0.8)
    run(params, first, range(2))
    with pytest.warns(UserWarning, match="lookahead_k=5"):
        second = Lookahead(inner, k=3, alpha=0.8)
    assert second.defaults["lookahead_k"] == second.param_groups[0]["lookahead_k"] == 5


# ---------------------------------------------------------------- defect 12
def test_a_timm_state_dict_without_the_converter_is_refused() -> None:
    params = params_of()
    opt = sgd(params)
    run(params, opt, range(K + 1))
    saved = opt.state_dict()
    timm_like = {
        "state": {
            key: {("lookahead_slow_buff" if n == "lookahead_slow" else n): v for n, v in s.items()}
            for key, s in saved["state"].items()
        },
        "param_groups": saved["param_groups"],
    }
    before = values(params)
    with pytest.raises(ValueError, match="convert_timm_state_dict"):
        sgd(params).load_state_dict(timm_like)
    assert_equal(values(params), before)
    assert convert_timm_state_dict  # the converter named in the error exists


# ---------------------------------------------------------------- the "lower" list
def test_global_step_hooks_fire_once_with_a_scheduler_on_the_inner_optimizer() -> None:
    params = params_of()
    inner = torch.optim.SGD(params, lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(inner, step_size=1)
    opt = Lookahead(inner, k=K)
    calls: list[str] = []
    handle = register_optimizer_step_pre_hook(lambda o, *_: calls.append(type(o).__name__))
    try:
        grads(params, 0)
        opt.step()
    finally:
        handle.remove()
    assert calls == ["Lookahead"]
    scheduler.step()  # no warning that optimizer.step() was not called: it was recorded


def test_slow_weights_inside_eval_switches_back_only_the_groups_it_switched() -> None:
    params = params_of()
    opt = sgd(params[:2])
    run(params[:2], opt, range(K + 1))
    opt.eval()
    slow = values(params[:2])
    opt.add_param_group({"params": [params[2]]})
    with opt.slow_weights():
        pass
    assert opt.param_groups[0]["lookahead_eval_mode"]
    assert_equal(values(params[:2]), slow)


def test_after_model_double_the_sync_keeps_float64() -> None:
    params = params_of()
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=K, alpha=ALPHA)
    run(params, opt, range(K + 1))
    for p in params:
        p.data = p.data.double()
    run(params, opt, range(K + 1, 2 * K - 1))
    slow = [opt.state[p]["lookahead_slow"].double() for p in params]
    grads(params, 2 * K - 1)
    with torch.no_grad():
        expected = [p - 0.1 * p.grad for p in params]
    opt.step()  # the sync
    for p, s, e in zip(params, slow, expected, strict=True):
        assert opt.state[p]["lookahead_slow"].dtype == torch.float64
        torch.testing.assert_close(p.detach(), s.lerp(e, ALPHA), rtol=1e-15, atol=1e-15)


def test_numpy_integers_are_accepted_for_the_counter_as_for_k() -> None:
    params = params_of()
    opt = sgd(params)
    opt.param_groups[0]["lookahead_k"] = np.int64(4)
    opt.param_groups[0]["lookahead_step"] = np.int64(2)
    run(params, opt, range(2))
    assert opt.param_groups[0]["lookahead_step"] == 0


# ---------------------------------------------------------------- torch.compile
@traces_the_core_without_breaks
def test_a_compiled_step_with_a_sync_has_no_graph_break_in_our_code() -> None:
    """Graph breaks come from the inner optimizer only (docs/compile.md)."""
    breaks: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = re.search(r"Graph break .*in user code at (\S+):\d+", record.getMessage())
            if found:
                breaks.append(found.group(1))

    torch._dynamo.reset()
    params = params_of()
    opt = Lookahead(torch.optim.Adam(params, lr=0.1), k=1, alpha=ALPHA)  # every step syncs
    grads(params, 0)
    opt.step()  # the first step captures the slow weights

    @torch.compile(backend="eager")
    def step() -> None:
        opt.step()

    recorder = Recorder()
    loggers = [logging.getLogger(name) for name in ("torch.__graph_breaks", "torch._dynamo")]
    torch._logging.set_logs(graph_breaks=True)
    for logger in loggers:
        logger.addHandler(recorder)
    try:
        grads(params, 1)
        step()
    finally:
        for logger in loggers:
            logger.removeHandler(recorder)
        torch._logging.set_logs()
    assert breaks, "the inner optimizer's own graph break was not seen: the test sees nothing"
    assert [b for b in breaks if "torch_lookahead" in b] == []
    assert opt.param_groups[0]["lookahead_step"] == 0


# ---------------------------------------------------------------- sync() called again
def test_sync_called_again_after_its_plan_failed_takes_one_outer_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finishing an interrupted sync() is calling it again, with the result of one sync(). A second
    outer step would not be a no-op here: bf16 fast weights are fp32 slow weights rounded."""

    def build() -> tuple[list[Any], Lookahead]:
        params = params_of(dtypes=(torch.bfloat16,) * 3)
        opt = sgd(params, slow_dtype=torch.float32, pullback_momentum="reset")
        run(params, opt, range(K + 1))
        return params, opt

    (params, opt), (reference_params, reference) = build(), build()
    reference.sync()
    real = torch._foreach_zero_
    monkeypatch.setattr(
        torch, "_foreach_zero_", lambda *a: (_ for _ in ()).throw(RuntimeError("injected"))
    )
    with pytest.raises(RuntimeError, match="injected"):
        opt.sync()  # fails at its last step, after the weights were synced
    monkeypatch.setattr(torch, "_foreach_zero_", real)
    opt.sync()
    assert_equal(values(params), values(reference_params))
    assert_equal(
        [opt.state[p]["lookahead_slow"] for p in params],
        [reference.state[p]["lookahead_slow"] for p in reference_params],
    )


@pytest.mark.parametrize("slow_dtype", [None, torch.float64])
def test_train_warns_once_when_parameters_were_written_in_eval_mode(
    monkeypatch: pytest.MonkeyPatch, slow_dtype: torch.dtype | None
) -> None:
    """A model checkpoint loaded after an evaluation (the HF Trainer's load_best_model_at_end)
    is overwritten by train(): say so, once, and change nothing else. With float64 slow copies
    the parameters are written by copies, not swapped: the same."""
    params = params_of()
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=K, alpha=ALPHA, slow_dtype=slow_dtype)
    run(params, opt, range(K + 1))
    opt.eval()
    _ = [p * 2 for p in params]  # evaluation reads the parameters: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.train()
        with opt.slow_weights():
            pass
    fast = values(params)
    opt.eval()
    copy = copy_module.deepcopy(opt)  # the record is not state: a copy's train() is silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        copy.train()
    with torch.no_grad():
        params[1].copy_(torch.full_like(params[1], 7.0))  # "loads" one parameter
    # The warning comes before the swap: a train() stopped part-way and called again warns once.
    fail_copies_after(monkeypatch, 0, RuntimeError("injected"))
    written = r"1 parameters were written in eval mode.*reset_slow"
    with pytest.warns(UserWarning, match=written), pytest.raises(RuntimeError, match="injected"):
        opt.train()
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.train()
    assert_equal(values(params), fast)  # train() did what it always does
    with pytest.warns(UserWarning, match="written in eval mode"), opt.slow_weights():
        params[0].detach().add_(1.0)  # (a write through .data is not seen)


@pytest.mark.parametrize("failing_call", range(3))
@pytest.mark.parametrize("written", [False, True])
def test_an_eval_finished_by_a_second_eval_sees_writes_in_eval_mode(
    monkeypatch: pytest.MonkeyPatch, failing_call: int, written: bool
) -> None:
    """An eval() stopped part-way and finished by the next eval() records what one uninterrupted
    eval() records: train() warns about a parameter written in eval mode, and only then."""
    params = params_of()
    opt = sgd(params)
    run(params, opt, range(K + 1))
    fail_copies_after(monkeypatch, failing_call, RuntimeError("injected"))
    with pytest.raises(RuntimeError, match="injected"):
        opt.eval()
    monkeypatch.undo()
    opt.eval()
    if written:
        with torch.no_grad():
            params[1].copy_(torch.full_like(params[1], 7.0))
        with pytest.warns(UserWarning, match="1 parameters were written in eval mode"):
            opt.train()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt.train()


def test_reset_slow_copies_into_the_slow_copies_that_fit() -> None:
    """reset_slow() allocates no second set of slow weights: a copy of the parameter's shape and
    slow dtype is overwritten in place; only a resized parameter gets a new one."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=3, slow_dtype=torch.float64)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    before = [opt.state[p]["lookahead_slow"] for p in model.parameters()]
    last = model[1].bias
    with torch.no_grad():
        model[0].weight.add_(1.0)
        last.data = torch.zeros(3)  # resized: its slow copy no longer fits
    opt.reset_slow()
    after = [opt.state[p]["lookahead_slow"] for p in model.parameters()]
    assert all(a is b for a, b in zip(before[:-1], after[:-1], strict=True))
    assert after[-1] is not before[-1] and after[-1].shape == (3,)
    for p, slow in zip(model.parameters(), after, strict=True):
        assert slow.dtype == torch.float64 and torch.equal(slow, p.double())


@pytest.mark.parametrize("through", ["step", "sync", "an overdue sync at the next step"])
def test_a_subclass_outer_step_runs_without_autograd_from_every_caller(through: str) -> None:
    """The documented extension point sees grad disabled, as torch.optim's steps do, whichever
    public call reaches it (before, sync() and step() differed)."""
    seen: list[bool] = []

    class Recording(Lookahead):
        def outer_step(self, groups: Any, restart: Any = None) -> None:
            seen.append(torch.is_grad_enabled())
            super().outer_step(groups, restart)

    params = params_of()
    opt = Recording(torch.optim.SGD(params, lr=0.1), k=K, alpha=ALPHA)
    steps = K if through == "step" else 1
    for step in range(steps):
        grads(params, step)
        opt.step()
    if through == "sync":
        opt.sync()
    elif through != "step":
        opt.param_groups[0]["lookahead_step"] = K  # a step stopped before its sync
        grads(params, 1)
        opt.step()
    assert seen and not any(seen)


def test_a_parameter_changed_while_a_sync_is_pending_blocks_until_undone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/design.md: a dtype change through ``.data`` (``model.bfloat16()``) between an
    interrupted sync and the next call makes what is left fail; every call raises until the
    change is undone, and the state is kept: the sync then finishes."""
    params = params_of(dtypes=(torch.float64,) * 3)
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=K, alpha=ALPHA)
    run(params, opt, range(1))
    slow = [opt.state[p]["lookahead_slow"].clone() for p in params]
    real, fired = torch._foreach_lerp_, []

    def interrupted(*args: Any) -> None:
        if not fired:
            fired.append(True)
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(torch, "_foreach_lerp_", interrupted)
    with pytest.raises(KeyboardInterrupt):
        opt.sync()
    params[0].data = params[0].data.to(torch.bfloat16)
    for call in (opt.sync, opt.state_dict, opt.reset_slow, opt.eval):
        with pytest.raises(RuntimeError, match="dtype"):
            call()
    assert_equal([opt.state[p]["lookahead_slow"] for p in params], slow)
    params[0].data = params[0].data.to(torch.float64)
    opt.sync()
    assert opt.param_groups[0]["lookahead_step"] == 0
    fresh = Lookahead(torch.optim.SGD(params_of(), lr=0.1), k=K, alpha=ALPHA)
    fresh.load_state_dict(opt.state_dict())


def _copies_interrupted_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Install a ``torch._foreach_copy_`` that raises KeyboardInterrupt at its n-th call after
    ``interrupt_at(n)`` (0: never); plans bind the kernel when they are built."""
    real, calls = torch._foreach_copy_, {"n": 0, "seen": 0}

    def copy(*args: Any) -> None:
        calls["seen"] += 1
        if calls["seen"] == calls["n"]:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(torch, "_foreach_copy_", copy)
    return lambda n: calls.update(n=n, seen=0)


def test_train_after_an_interrupted_eval_and_train_warns_of_nothing_and_keeps_no_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """eval() stopped, then train() stopped inside its own swap, then train(): nothing was
    written in eval mode, so no warning, and no record of the eval is left behind (it would keep
    removed parameters alive)."""
    params = params_of()
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=2, alpha=ALPHA)
    run(params, opt, range(3))
    fast = values(params)
    interrupt_at = _copies_interrupted_at(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interrupt_at(1)
        with pytest.raises(KeyboardInterrupt):
            opt.eval()
        interrupt_at(4)  # train() finishes the eval (2 copies), then its own swap stops
        with pytest.raises(KeyboardInterrupt):
            opt.train()
        interrupt_at(0)
        opt.train()
    assert not opt.in_eval_mode
    assert_equal(values(params), fast)
    assert not opt._eval_versions


@pytest.mark.parametrize("interrupted", ["eval", "train"])
def test_slow_weights_finishes_an_interrupted_switch_before_choosing_groups(
    monkeypatch: pytest.MonkeyPatch, interrupted: str
) -> None:
    """docs/design.md: the pending operation is finished first, then the row applies. After an
    interrupted train(), the block sees the slow weights (it used to see the fast ones); after an
    interrupted eval(), the optimizer is in eval mode after the block, as after a whole eval()."""
    params = params_of()
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=3, alpha=ALPHA)
    run(params, opt, range(2))
    fast, slow = values(params), [opt.state[p]["lookahead_slow"].clone() for p in params]
    if interrupted == "train":
        opt.eval()
    interrupt_at = _copies_interrupted_at(monkeypatch)
    interrupt_at(1)
    with pytest.raises(KeyboardInterrupt):
        getattr(opt, interrupted)()
    interrupt_at(0)
    with opt.slow_weights():
        assert_equal(values(params), slow)
    assert opt.in_eval_mode == (interrupted == "eval")
    opt.train()
    assert_equal(values(params), fast)


def test_a_bad_fast_weights_entry_in_eval_mode_says_how_to_leave_eval_mode() -> None:
    """reset_slow() refuses eval mode, so the error of train() must not point to it."""
    params = params_of()
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=K, alpha=ALPHA)
    run(params, opt, range(2))
    opt.eval()
    opt.state[params[0]]["lookahead_fast"] = None
    with pytest.raises(ValueError, match="delete it to keep the parameter as is"):
        opt.train()
    del opt.state[params[0]]["lookahead_fast"]
    opt.train()
    assert not opt.in_eval_mode


def test_a_step_hook_that_calls_eval_leaves_the_sync_owed_and_says_so() -> None:
    """The inner step ran; the sync it owes runs at the next step, after train()."""
    params = params_of()
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=1, alpha=ALPHA)
    handle = opt.optimizer.register_step_post_hook(lambda *_: opt.eval())
    grads(params, 0)
    with pytest.raises(RuntimeError, match=r"step\(\) \(its sync, after the inner step\) needs"):
        opt.step()
    handle.remove()
    assert opt.param_groups[0]["lookahead_step"] == 1
    opt.train()
    grads(params, 1)
    opt.step()  # syncs the owed cycle first, then steps and syncs its own
    assert opt.param_groups[0]["lookahead_step"] == 0


# ---------------------------------------------------------------- found by review, this version


def test_a_sparse_parameter_is_refused_at_its_first_step_before_anything_changes() -> None:
    """A sparse COO parameter used to be captured, then fail every later call at its first sync
    (state_dict() included): a TypeError at the first step, with nothing changed, instead."""
    dense = torch.nn.Parameter(torch.ones(3))
    sparse = torch.nn.Parameter(torch.eye(3).to_sparse())
    opt = Lookahead(torch.optim.SGD([dense, sparse], lr=0.1), k=2, alpha=ALPHA)
    dense.grad, sparse.grad = torch.ones(3), torch.eye(3).to_sparse()
    for _ in range(2):  # refused every time, never half done
        with pytest.raises(TypeError, match="strided"):
            opt.step()
    assert torch.equal(dense.detach(), torch.ones(3))
    assert opt.param_groups[0]["lookahead_step"] == 0 and not opt.state
    opt.state_dict()
    with pytest.raises(TypeError, match="strided"):  # with a closure: after its evaluation
        opt.step(lambda: torch.zeros(()))
    assert torch.equal(dense.detach(), torch.ones(3)) and not opt.state
    sparse.grad = None  # a sparse parameter that gets no gradient is no concern of Lookahead's
    opt.step()
    assert opt.param_groups[0]["lookahead_step"] == 1


@pytest.mark.parametrize("at", [1, 2])
def test_slow_weights_interrupted_in_its_switch_leaves_the_fast_weights_in_place(
    monkeypatch: pytest.MonkeyPatch, at: int
) -> None:
    """An exception in the entry's switch is an exception of the block: the parameters hold the
    fast weights after it (the optimizer used to stay in eval mode after the retried block)."""
    params = params_of()
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=3, alpha=ALPHA)
    run(params, opt, range(2))
    fast, slow = values(params), [opt.state[p]["lookahead_slow"].clone() for p in params]
    interrupt_at = _copies_interrupted_at(monkeypatch)
    interrupt_at(at)
    with pytest.raises(KeyboardInterrupt), opt.slow_weights():
        pytest.fail("the block must not run")  # pragma: no cover
    interrupt_at(0)
    assert not opt.in_eval_mode
    assert_equal(values(params), fast)
    with opt.slow_weights():  # the retried block
        assert_equal(values(params), slow)
    assert not opt.in_eval_mode
    assert_equal(values(params), fast)


def test_a_group_copied_from_one_in_eval_mode_is_added_in_train_mode() -> None:
    """``{**group, "params": [...]}`` inside slow_weights() copies the eval flag: the new group's
    parameters hold their own values, so it starts in train mode (docs/design.md)."""
    params = params_of()
    opt = Lookahead(torch.optim.SGD(params[:2], lr=0.1), k=K, alpha=ALPHA)
    run(params[:2], opt, range(2))
    with opt.slow_weights():
        opt.add_param_group({**opt.param_groups[0], "params": [params[2]]})
    assert not opt.in_eval_mode
    run(params, opt, range(2, 4))


def test_k_and_alpha_edited_to_numpy_numbers_are_saved_as_python_numbers(tmp_path: Any) -> None:
    """checkpoints.md: every value torch-lookahead adds is a tensor, an int, a float or a bool,
    also before the next step has checked an edit (torch.load(weights_only=True) refuses numpy)."""
    params = params_of()
    opt = sgd(params)
    run(params, opt, range(2))
    opt.param_groups[0].update(lookahead_k=np.int64(4), lookahead_alpha=np.float32(0.25))
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    saved = torch.load(tmp_path / "opt.pt", weights_only=True)["param_groups"][0]
    assert (type(saved["lookahead_k"]), type(saved["lookahead_alpha"])) == (int, float)


def test_a_load_that_warns_has_loaded_everything_also_under_warnings_as_errors() -> None:
    """The warning about the checkpoint's k comes once everything is loaded (post-hooks and
    ``defaults`` included): with warnings as errors the load is complete, not half done."""
    params = params_of()
    saved = Lookahead(torch.optim.SGD(params, lr=0.1), k=5, alpha=0.25)
    run(params, saved, range(2))
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=3, alpha=0.5)
    hooked: list[int] = []
    opt.register_load_state_dict_post_hook(lambda _: hooked.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="lookahead_k=5 replaces this optimizer's 3"):
            opt.load_state_dict(saved.state_dict())
    assert hooked == [1]
    assert (opt.defaults["lookahead_k"], opt.defaults["lookahead_alpha"]) == (5, 0.25)
    assert opt.param_groups[0]["lookahead_step"] == 2


def test_a_refused_construction_leaves_the_inner_optimizer_as_it_was() -> None:
    """A group with a bad value of its own refuses the wrapper before it writes the inner
    optimizer's ``defaults`` (it used to leave ``lookahead_*`` defaults behind)."""
    inner = torch.optim.SGD(params_of(), lr=0.1)
    inner.param_groups[0]["lookahead_k"] = 0
    defaults = dict(inner.defaults)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lookahead_k'\]"):
        Lookahead(inner, k=K, alpha=ALPHA)
    assert inner.defaults == defaults
    assert (
        inner.param_groups[0]["lookahead_k"] == 0 and "lookahead_alpha" not in inner.param_groups[0]
    )


def test_eval_before_any_step_stays_in_train_mode_so_a_load_is_taken() -> None:
    """A plain HF Trainer's evaluate() before train() calls optimizer.eval(), then Accelerate's
    prepare reloads the optimizer: with no slow copies yet, the parameters hold their slow weights
    already, so eval() leaves the group in train mode (a load used to be refused)."""
    params = params_of()
    opt = sgd(params)
    opt.eval()
    assert not opt.in_eval_mode and not opt._eval_versions  # no record left for train()
    opt.load_state_dict(opt.state_dict())
    reference_params = params_of()
    reference = sgd(reference_params)
    run(params, opt, range(4))
    run(reference_params, reference, range(4))
    assert_equal(values(params), values(reference_params))
    opt.eval()  # with slow copies: eval mode
    assert opt.in_eval_mode


def test_eval_state_dict_flags_the_groups_eval_flags() -> None:
    """The eval form of eval_state_dict() is what eval() + state_dict() writes: a group without
    slow copies stays in train mode there too, so loading it takes the next load."""
    params = params_of()
    opt = sgd(params[:2])
    opt.add_param_group({"params": [params[2]]})
    grads(params[:2], 0)
    opt.step()
    form, _ = opt.eval_state_dict()
    opt.eval()
    assert [g["lookahead_eval_mode"] for g in form["param_groups"]] == [True, False]
    assert [g["lookahead_eval_mode"] for g in opt.state_dict()["param_groups"]] == [True, False]
    unstepped = sgd(params_of())
    unstepped.load_state_dict(sgd(params_of()).eval_state_dict()[0])
    assert not unstepped.in_eval_mode
    unstepped.load_state_dict(unstepped.state_dict())  # the next load is taken


def test_reading_an_unstepped_optimizer_with_dcp_counts_torchs_zero_step() -> None:
    """docs/distributed.md: torch's get_optimizer_state_dict creates a fresh optimizer's state by
    one step with zero gradients at lr 0; Lookahead counts it (the weights do not move)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = torch.nn.Linear(3, 2)
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=K, alpha=ALPHA)
    before = values(list(model.parameters()))
    get_optimizer_state_dict(model, opt)
    assert opt.param_groups[0]["lookahead_step"] == 1 and opt.param_groups[0]["lr"] == 0.1
    assert_equal(values(list(model.parameters())), before)
    get_optimizer_state_dict(model, opt)  # a stepped optimizer: reading changes nothing
    assert opt.param_groups[0]["lookahead_step"] == 1


def test_fast_weights_of_another_dtype_wait_in_buffers_of_each_eval() -> None:
    """docs/evaluation.md: with slow_dtype, the fast weights wait in buffers allocated by each
    eval() and dropped by train()."""
    params = params_of(dtypes=(torch.bfloat16,) * 2)
    opt = Lookahead(torch.optim.SGD(params, lr=0.1), k=K, alpha=ALPHA, slow_dtype=torch.float32)
    run(params, opt, range(2))
    opt.eval()
    first = [opt.state[p]["lookahead_fast"] for p in params]
    opt.train()
    assert not any("lookahead_fast" in opt.state[p] for p in params)
    opt.eval()
    assert all(a is not opt.state[p]["lookahead_fast"] for a, p in zip(first, params, strict=True))
    opt.train()
