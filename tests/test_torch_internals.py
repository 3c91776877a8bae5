"""The parts of torch.optim below its public API that the wrapper relies on, each pinned here.

If a torch release changes one of them, these tests fail by name, before any behaviour test
fails in a less obvious way. Each is used for a reason written next to its use in
``torch_lookahead/lookahead.py``:

* ``Optimizer.__setstate__`` creates the six hook dictionaries and decorates ``step``, so the
  wrapper can be set up without ``Optimizer.__init__`` (which would build a second list of
  parameter groups);
* every optimizer class's ``step`` is decorated once (``step.hooked``) by a ``functools.wraps``
  wrapper (``step.__wrapped__``) that runs the global and instance step hooks, so the wrapper can
  call its inner optimizer's step without the global hooks firing a second time;
* the instance hooks live in ``_optimizer_step_pre_hooks``/``_optimizer_step_post_hooks`` and the
  state-dict hooks in ``_optimizer_state_dict_*``/``_optimizer_load_state_dict_*`` dictionaries.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_pre_hook

HOOK_DICTS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


def test_setstate_creates_the_hook_dicts_and_decorates_step() -> None:
    class Bare(Optimizer):
        defaults: dict[str, Any]

        def step(self, closure: Any = None) -> None:  # type: ignore[override]
            return None

    bare = Bare.__new__(Bare)
    bare.defaults = {}
    Optimizer.__setstate__(bare, {})
    for name in HOOK_DICTS:
        assert isinstance(getattr(bare, name), OrderedDict), name
    assert getattr(Bare.step, "hooked", False) is True
    fired: list[str] = []
    bare.register_step_pre_hook(lambda *args: fired.append("pre"))
    bare.register_state_dict_pre_hook(lambda *args: fired.append("sd"))
    bare.step()
    assert fired == ["pre"]
    assert list(bare._optimizer_state_dict_pre_hooks.values())


def test_the_step_decoration_wraps_the_class_step_and_runs_the_global_hooks() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([p], lr=1.0)
    step = type(sgd).step
    assert getattr(step, "hooked", False) is True
    undecorated = step.__wrapped__  # type: ignore[attr-defined]
    calls: list[str] = []
    handle = register_optimizer_step_pre_hook(lambda *args: calls.append("global"))
    sgd.register_step_pre_hook(lambda *args: calls.append("instance"))
    try:
        p.grad = torch.ones(1)
        sgd.step()
        assert calls == ["global", "instance"]
        calls.clear()
        undecorated(sgd)  # the undecorated step runs no hook at all, and still steps
        assert calls == []
        assert p.item() == -2.0
    finally:
        handle.remove()
    assert isinstance(sgd._optimizer_step_pre_hooks, OrderedDict)
    assert isinstance(sgd._optimizer_step_post_hooks, OrderedDict)
    assert callable(sgd._optimizer_step_code)
