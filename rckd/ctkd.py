"""CTKD's learned temperature: the trainer's state for methods that learn their temperature.

Li et al., "Curriculum Temperature for Knowledge Distillation", AAAI 2023; zhengli97/CTKD, commit
7d52522. One global parameter theta, initialised to 1 (models/temp_global.py, `Global_T`), gives
T = 1 + 20 sigmoid(theta) through a gradient-reversal layer whose scale follows the cosine curriculum
of `rckd.losses.functional.ctkd_lambda`: the student's loss gradient pushes theta the other way, so
the temperature moves to make the distillation loss larger. theta is trained by the student's own
SGD (train_student.py puts `Global_T` in the one optimiser's parameters: same lr, momentum and weight
decay), saved in resume.pt, and its temperature is logged per epoch in history.csv.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rckd import distributed
from rckd.losses import catalog
from rckd.losses.functional import ctkd_lambda, ctkd_temperature, gradient_reversal

INITIAL_THETA = 1.0  # Global_T: nn.Parameter(torch.ones(1)), so T starts at 1 + 20 sigmoid(1) = 15.62


class LearnedTemperature(nn.Module):
    """theta and its curriculum; `forward(epoch)` -> the 0-dim temperature of that (1-based) epoch."""

    def __init__(self, curriculum: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(INITIAL_THETA))
        self.curriculum = curriculum

    def forward(self, epoch: Tensor | float) -> Tensor:
        return ctkd_temperature(gradient_reversal(self.theta, ctkd_lambda(epoch, self.curriculum)))

    def value(self) -> float:
        """The current temperature on the host (one synchronisation: call it at the end of an epoch)."""
        return float(ctkd_temperature(self.theta.detach()))


def learned_temperature(method: str, params: dict, device: torch.device,
                        group: distributed.Group) -> LearnedTemperature | None:
    """The learned temperature of a method that has one (else None), on `device`. Data-parallel
    processes average its gradient, as DDP does the student's, so every copy of theta stays equal."""
    if not catalog.method(method).learns_temperature:
        return None
    temperature = LearnedTemperature(params["curriculum"]).to(device)
    if group.world > 1:
        def average(theta: Tensor) -> None:
            distributed.total(theta.grad, group).div_(group.world)

        temperature.theta.register_post_accumulate_grad_hook(average)
    return temperature
