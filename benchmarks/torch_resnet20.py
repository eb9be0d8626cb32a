"""The same ResNet-20 (BN, projection shortcuts) in PyTorch eager, for the speed baseline."""

from __future__ import annotations

import statistics
import time


def _build(width: int = 1):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv0 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.norm0 = nn.BatchNorm2d(cout)
            self.conv1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.norm1 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            y = torch.relu(self.norm0(self.conv0(x)))
            y = self.norm1(self.conv1(y))
            return torch.relu(self.shortcut(x) + y)

    layers = [nn.Conv2d(3, 16 * width, 3, 1, 1, bias=False), nn.BatchNorm2d(16 * width), nn.ReLU()]
    cin = 16 * width
    for stage, mult in enumerate((1, 2, 4)):
        for block in range(3):
            cout = 16 * width * mult
            layers.append(Block(cin, cout, 2 if stage > 0 and block == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


def torch_step_fn(batch: int, steps: int):
    """A callable that runs `steps` SGD steps (forward, backward, update) in eager mode,
    after one warmup step; for interleaving with other contenders."""
    import torch

    torch.manual_seed(0)
    model = _build()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    def run():
        for _ in range(steps):
            step()

    step()
    return run


def torch_step_time(batch: int, steps: int, repeats: int) -> float:
    """Median seconds per step in eager mode (on its own; the suite interleaves)."""
    run = torch_step_fn(batch, steps)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)
