"""Accelerate keeps process-wide singletons, which the HF Trainer uses too."""

from __future__ import annotations


def reset_accelerate_state() -> None:
    """Forget every Accelerator made so far, so that the next one may use other settings."""
    try:
        from accelerate.state import AcceleratorState, GradientState
    except ImportError:
        return
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
