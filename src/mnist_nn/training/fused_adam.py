"""Adam's fused CPU update without ``torch.optim``'s per-step bookkeeping.

The tutorial's MLP takes about 1 ms a step on two CPU cores, and profiling one epoch (cProfile, 938
steps) shows ``optimizer.step()`` and ``zero_grad()`` costing about a third of it while the update itself,
one ``torch._fused_adam_`` call, is under a tenth: the rest is Python around it (the profiler hooks,
re-collecting the parameters' state into lists, grouping them by device and dtype, the argument
checks). ``FusedAdamStep`` makes the same two kernel calls with the same arguments that
``torch.optim.Adam(fused=True).step()`` ends in (``_foreach_add_`` on the step counts, then
``_fused_adam_``/``_fused_adamw_``), so the weights are bitwise those of ``optimizer.step()``
(tests/test_fused_step.py checks it), and the optimizer keeps its state: checkpoints, resume and the
learning-rate schedule (read from ``param_groups`` each step) work as before.

It steps in only where that equality holds: a CPU optimizer built by ``make_optimizer`` (Adam or AdamW,
fused, no amsgrad, maximize, capturable or differentiable), once its state exists (the first step goes
through ``optimizer.step()``, which creates it), and when every parameter has a gradient. Anywhere
else, and for SGD, it calls ``optimizer.step()``. Optimizer step hooks are not run on the lean path;
this project registers none.

The kernels are PyTorch's private operators, which may change between releases: the lean path is taken
only where this PyTorch has them with every argument passed here (``private_kernels_missing``), and
otherwise ``optimizer.step()`` runs, with the same result.
"""

from __future__ import annotations

import torch

__all__ = ["FusedAdamStep", "private_kernels_missing"]

# The keyword arguments passed to the private kernels below, checked against their schemas before use.
KERNEL_KEYWORDS = ("amsgrad", "lr", "beta1", "beta2", "weight_decay", "eps", "maximize", "grad_scale", "found_inf")
KERNELS = ("_fused_adam_", "_fused_adamw_")


def private_kernels_missing() -> str | None:
    """Why this PyTorch cannot take the lean path (a kernel or an argument of it is missing), or None."""
    if not callable(getattr(torch, "_foreach_add_", None)):
        return "torch._foreach_add_ is missing"
    for name in KERNELS:
        packet = getattr(torch.ops.aten, name, None)
        if packet is None or not callable(getattr(torch, name, None)):
            return f"torch.{name} is missing"
        arguments = {argument.name for argument in packet.default._schema.arguments}
        absent = [keyword for keyword in KERNEL_KEYWORDS if keyword not in arguments]
        if absent:
            return f"torch.{name} takes no {', '.join(absent)}"
    return None


class FusedAdamStep:
    """``zero_grad`` and ``step`` for ``optimizer``, the lean way where it is exact (see the module's doc)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.lean = isinstance(optimizer, torch.optim.Adam) and all(
            group["fused"]
            and not (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"])
            and all(p.device.type == "cpu" for p in group["params"])
            for group in optimizer.param_groups
        )
        # One fused call per group covers tensors of one dtype (torch.optim groups them by dtype first).
        self.lean = self.lean and len({p.dtype for g in optimizer.param_groups for p in g["params"]}) == 1
        # Why the lean path is not taken where it could be: PyTorch lacks a kernel it calls (None: it is taken).
        self.unavailable = private_kernels_missing() if self.lean else None
        self.lean = self.lean and self.unavailable is None
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]

    def zero_grad(self) -> None:
        """``optimizer.zero_grad(set_to_none=True)``."""
        if not self.lean:
            self.optimizer.zero_grad(set_to_none=True)
            return
        for parameter in self.parameters:
            parameter.grad = None

    def step(self) -> None:
        """``optimizer.step()``: the same update, bitwise."""
        state = self.optimizer.state
        if not self.lean or any(p.grad is None or p not in state for p in self.parameters):
            self.optimizer.step()
            return
        with torch.no_grad():
            for group in self.optimizer.param_groups:
                params = group["params"]
                states = [state[p] for p in params]
                steps = [s["step"] for s in states]
                beta1, beta2 = group["betas"]
                update = torch._fused_adamw_ if _decoupled(self.optimizer, group) else torch._fused_adam_
                torch._foreach_add_(steps, 1)
                update(
                    params,
                    [p.grad for p in params],
                    [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states],
                    [],
                    steps,
                    amsgrad=False,
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=False,
                    grad_scale=None,
                    found_inf=None,
                )


def _decoupled(optimizer: torch.optim.Optimizer, group: dict) -> bool:
    """AdamW's decoupled weight decay: a group flag since PyTorch 2.6 (AdamW subclasses Adam), the class before."""
    return bool(group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW)))
