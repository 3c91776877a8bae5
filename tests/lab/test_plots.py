"""The report's figures: readable annotations, plain numbers on log axes, a titled figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from torch_lookahead_lab import plots
from torch_lookahead_lab.nqm import NQMPoint


@pytest.mark.parametrize(
    ("rgba", "color"),
    [((0.0, 0.0, 0.0, 1.0), "white"), ((1.0, 1.0, 1.0, 1.0), "black"),
     ((0.02, 0.19, 0.38, 1.0), "white"), ((0.97, 0.97, 0.97, 1.0), "black")],
)  # fmt: skip
def test_annotations_contrast_with_their_cell(rgba: tuple[float, ...], color: str) -> None:
    assert plots._text_color(rgba) == color


@pytest.mark.parametrize(
    ("values", "labelled", "unlabelled"),
    [((1.1, 4.0), ["2", "3"], []), ((0.05, 3.0), ["0.2", "0.5"], ["0.3"]),
     ((0.001, 3.0), [], ["0.2", "0.3"])],
)  # fmt: skip
def test_log_axes_carry_plain_numbers(
    values: tuple[float, float], labelled: list[str], unlabelled: list[str]
) -> None:
    figure, axis = plt.subplots()
    axis.plot([0.1, 0.9], values)
    axis.set_yscale("log")
    plots._plain_log_axis(axis, "y")
    major = axis.yaxis.get_major_formatter()
    minor = axis.yaxis.get_minor_formatter()
    assert major(0.1, 0) == "0.1" and major(1.0, 0) == "1"
    assert [minor(float(text), 0) for text in labelled] == labelled
    assert all(minor(float(text), 0) == "" for text in unlabelled)
    plt.close(figure)


def test_a_figure_names_its_task_and_labels_its_reference_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: saved.append(figure) or path)
    point = NQMPoint(lr=0.5, sgd_theory=1.5, sgd_simulated=1.49, lookahead_theory=1.3,
                     lookahead_simulated=1.31, floor=1.0, chains=10, difference_low=-0.2,
                     difference_high=-0.1)  # fmt: skip
    plots.plot_nqm([point], tmp_path / "nqm.png", 5, 0.5, title="nqm, 10 chains, quick run")
    figure = saved[0]
    assert figure._suptitle.get_text() == "nqm, 10 chains, quick run"
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert "noise floor" in texts
    plt.close(figure)
