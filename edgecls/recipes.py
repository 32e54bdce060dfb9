"""Training recipes: what `edgecls train --recipe NAME` runs, and the user's overrides checked before any work.
Torch-free, so the CLI can list and validate them without importing the training code.

None of these recipes has been measured on a GPU yet (README, "Measured figures"): they are reasoned from the
reference figures of ../shared/DESIGN.md §5, and `benchmarks/device_check.py` compares them in one run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from edgecls.errors import EdgeclsError

FLIPS = ("alternate", "random")


@dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int
    lr: float  # peak of the one-cycle schedule
    crops_per_image: int = 1  # training samples drawn from each image per epoch
    momentum: float = 0.9  # Nesterov, constant: the one-cycle schedule moves the learning rate only
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup: float = 0.2  # fraction of the steps spent rising to the peak
    # "alternate": each image is mirrored in every other epoch, from a seeded first toss (airbench's alternating
    # flip: both sides of every image within two epochs); "random": a fresh coin toss per sample.
    flip: str = "alternate"
    # Time constant of the exponential moving average of the weights that is evaluated and saved instead of the
    # last weights, as a fraction of all training steps, so that it scales with --epochs (0: no average).
    ema: float = 0.0


RECIPES: dict[str, Recipe] = {
    # Accuracy per second on one big GPU: batch 1024 keeps it busy (the reference trainer did 30 epochs in 10.8 s,
    # 86.5% single-crop); 40 epochs with alternating flips and a short weight average aim at >= 87.2% in <= 15 s.
    "fast": Recipe(epochs=40, batch_size=1024, lr=0.4, ema=0.04),
    # Accuracy first: the reference trainer reached 88.45% single-crop in 120 epochs at batch 512 and was still
    # gaining; 200 epochs (about 1.5 minutes on an H100) with the same additions aim at >= 89.5%.
    "best": Recipe(epochs=200, batch_size=512, lr=0.2, ema=0.02),
    # The paper's protocol: batch 128, 120 epochs, each image cropped six times per epoch (300,000 samples).
    "paper": Recipe(epochs=120, batch_size=128, lr=0.05, crops_per_image=6, flip="random"),
}
DEFAULT_RECIPE = "fast"


def training_plan(recipe: str = DEFAULT_RECIPE, epochs: Optional[int] = None, batch_size: Optional[int] = None,
                  lr: Optional[float] = None) -> Recipe:
    """The named recipe with the user's overrides; an EdgeclsError for values that cannot work."""
    if recipe not in RECIPES:
        raise EdgeclsError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    plan = RECIPES[recipe]
    for name, value in (("epochs", epochs), ("batch size", batch_size)):
        if value is not None and value < 1:
            raise EdgeclsError(f"{name} must be at least 1, got {value}")
    if lr is not None and not lr > 0:
        raise EdgeclsError(f"learning rate must be positive, got {lr}")
    if batch_size is not None and lr is None:  # keep the recipe's learning rate per image when only the batch changes
        plan = replace(plan, lr=plan.lr * batch_size / plan.batch_size)
    return replace(plan, epochs=epochs or plan.epochs, batch_size=batch_size or plan.batch_size, lr=lr or plan.lr)
