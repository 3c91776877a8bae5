"""Draw the figures of the documentation (needs matplotlib, which the dev environment has).

    python docs/scripts/make_figures.py            # writes docs/img/*.png

Every figure is computed with the real ``torch_lookahead.Lookahead``; nothing is drawn by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import FuncFormatter, LogLocator

from torch_lookahead import Lookahead

IMG_DIR = Path(__file__).resolve().parents[1] / "img"

# An ill-conditioned valley, f(w) = (w_1^2 + CURVATURE * w_2^2) / 2. LR * CURVATURE = 1.96, just under
# the divergence limit 2: plain SGD bounces across the steep direction, barely damped, while it
# moves along the flat one.
CURVATURE = 20.0
LR = 0.098
K, ALPHA = 5, 0.5
START = (-4.0, 1.5)
STEPS = 40


def _loss(w: torch.Tensor) -> torch.Tensor:
    return 0.5 * (w[0] ** 2 + CURVATURE * w[1] ** 2)


def _run(
    lookahead: bool,
) -> tuple[list[tuple[float, float]], list[float], list[tuple[float, float]]]:
    """Fast-weight path, loss after every step and (with Lookahead) the slow weights at each sync."""
    w = torch.nn.Parameter(torch.tensor(START, dtype=torch.float64))
    inner = torch.optim.SGD([w], lr=LR)
    optimizer = Lookahead(inner, k=K, alpha=ALPHA) if lookahead else inner
    path = [START]
    # The inner optimizer's post-hook sees every inner step, also the k-th before its sync.
    inner.register_step_post_hook(lambda *_: path.append((w[0].item(), w[1].item())))
    losses = [_loss(w).item()]
    slow = [START]
    for step in range(1, STEPS + 1):
        optimizer.zero_grad()
        _loss(w).backward()
        optimizer.step()
        losses.append(_loss(w).item())
        if lookahead and step % K == 0:
            path.append((w[0].item(), w[1].item()))  # pulled back to the new slow weights
            slow.append((w[0].item(), w[1].item()))
    return path, losses, slow


def lookahead_trajectory(out: Path) -> Path:
    """Fast and slow weights of Lookahead(SGD) next to plain SGD on an ill-conditioned valley."""
    sgd_path, sgd_losses, _ = _run(lookahead=False)
    fast_path, lookahead_losses, slow_points = _run(lookahead=True)

    figure, (ax_path, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    grid = torch.linspace(-4.5, 4.5, 200, dtype=torch.float64)
    x, y = torch.meshgrid(grid, torch.linspace(-2.0, 2.0, 200, dtype=torch.float64), indexing="xy")
    ax_path.contour(x, y, 0.5 * (x**2 + CURVATURE * y**2), levels=12, colors="0.85")
    ax_path.plot(*zip(*sgd_path, strict=True), color="0.55", lw=1, label="SGD alone")
    ax_path.plot(*zip(*fast_path, strict=True), color="tab:blue", lw=1, label="fast weights θ")
    ax_path.plot(
        *zip(*slow_points, strict=True), "o-", color="tab:red", ms=5, lw=2, label="slow weights φ"
    )
    ax_path.set(title=f"Lookahead(SGD), k={K}, α={ALPHA}", xlabel="w₁ (flat)", ylabel="w₂ (steep)")
    ax_path.legend(loc="upper right", fontsize=8)

    steps = range(len(sgd_losses))
    ax_loss.semilogy(steps, sgd_losses, color="0.55", label="SGD alone")
    ax_loss.semilogy(steps, lookahead_losses, color="tab:blue", label="Lookahead(SGD)")
    for sync in range(K, STEPS + 1, K):
        ax_loss.axvline(sync, color="tab:red", lw=0.5, alpha=0.4)
    ax_loss.set(
        title="loss at the fast weights (red lines: syncs)", xlabel="inner step", ylabel="loss"
    )
    # plain numbers (0.2, 0.5, 1, 2, 5, ...) on the log axis instead of powers of ten
    ax_loss.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax_loss.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax_loss.legend(fontsize=8)
    figure.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    target = out / "lookahead-trajectory.png"
    figure.savefig(target)
    plt.close(figure)
    return target


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=IMG_DIR, help="folder for the PNG files")
    args = parser.parse_args(argv)
    written = [lookahead_trajectory(args.out)]
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
