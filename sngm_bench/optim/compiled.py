"""Our optimizers' steps compiled by torch.compile (`compile_optimizer=true`).

Eager, a step of LARS, LAMB or SNGM's per-layer form is a few multi-tensor kernels plus, for each
parameter tensor, the kernels that apply its own trust ratio or norm: on a GPU, hundreds of
launches. Compiled, inductor fuses them into a few kernels that read each tensor's factor from a
device vector. Two things make the step compile once per run instead of once per step:

- each optimizer's arithmetic is a pure function of tensor lists (its `update_function`),
  compiled without the host bookkeeping around it (which parameters have gradients, new state);
- the values that change from step to step (the scheduled lr, LAMB's bias corrections) enter it as
  one device vector, not as Python floats: torch.compile specializes on a float and would compile
  again for each new value, until its recompile limit, after which the step silently runs eagerly.
"""

from __future__ import annotations

import types
from typing import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer


class CompilableOptimizer(Optimizer):
    """An optimizer whose per-group arithmetic, the subclass's `update_function`, runs eagerly
    (`compile_backend=None`) or compiled by torch.compile with that backend ("inductor" in runs;
    tests also use "aot_eager")."""

    update_function: Callable  # a staticmethod of the subclass

    def __init__(self, params, defaults: dict, compile_backend: str | None):
        super().__init__(params, defaults)
        self._use_backend(compile_backend)

    def _use_backend(self, compile_backend: str | None) -> None:
        self.compile_backend = compile_backend
        self.update = self.update_function
        if compile_backend:
            self.update = torch.compile(own_copy(self.update), backend=compile_backend, dynamic=False)

    def __getstate__(self):  # Optimizer's keeps only defaults, state and groups, not our settings
        return {key: value for key, value in self.__dict__.items() if key != "update"}

    def __setstate__(self, state):  # also called by load_state_dict, with groups and state only
        super().__setstate__(state)
        if "update" not in self.__dict__:  # unpickled
            self._use_backend(self.compile_backend)

    def step_values(self, like: Tensor, *values: float | list[float]) -> tuple:
        """The step's changing values for `update`, each a float or a list of floats (one per
        tensor): as they are when eager (foreach ops take them as host scalars); when compiled,
        views of one vector on `like`'s device (in its dtype, at least float32), copied from
        pinned memory on CUDA so that the host does not wait."""
        if not self.compile_backend:
            return values
        flat = [x for value in values for x in (value if isinstance(value, list) else [value])]
        host = torch.tensor(flat, dtype=torch.promote_types(like.dtype, torch.float32))
        if like.is_cuda:
            host = host.pin_memory()
        vector, views, start = host.to(like.device, non_blocking=True), [], 0
        for value in values:
            if isinstance(value, list):
                views.append(vector[start:start + len(value)])
                start += len(value)
            else:
                views.append(vector[start])
                start += 1
        return tuple(views)


def own_copy(function: Callable) -> Callable:
    """`function` with a code object of its own. torch.compile keeps the graphs it compiled for a
    function with its code object, up to a recompile limit (8 by default), after which the
    function runs eagerly: shared by all optimizers of a process, the graphs for each new setting
    (a sweep's weight decays, models, ...) would add up to it in a Hydra sweep, which runs its
    runs one after another in one process."""
    copy = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    return copy
