"""What vtr's own code costs per call, in dispatched ops, host time and (on CUDA) kernel launches.

On a GPU a reduction's overhead is not its FLOPs but its launches and host syncs: every ATen op vtr
dispatches is at least one kernel launch (a few microseconds of host time each), and a host↔device sync
stalls the launch queue. So the instrument counts, for one ``generate(max_new_tokens=1)`` call:

- ``ops``: ATen ops dispatched beyond the unwrapped model's own count on the same input (a
  ``TorchDispatchMode`` sees every op, on any device, deterministically: a budget that CPU runs can hold);
- ``host_ms``: time inside vtr's timing sections (the pre-LLM engine minus the model's encoder, plus the
  in-LLM hooks), median of repeats; on CPU this is host time, on CUDA the sections synchronise;
- on CUDA, ``launches``: kernel launches beyond the unwrapped model (``torch.profiler``), and
  ``syncs``: whether vtr's sections forced a host↔device sync (``torch.cuda.set_sync_debug_mode``).

Run it on shape proxies of real checkpoints (``vtr.measure.presets.shape_proxy``): same visual geometry
and depth, tiny widths, so the op and token counts are the real model's while a CPU runs it in seconds.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vtr
from vtr.measure.timing import device_sync, recording

IGNORED_OPS = frozenset({"aten.detach.default", "aten.lift_fresh.default"})
"""Bookkeeping ops that launch nothing (autograd detaches, tensor-literal lifting)."""


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched inside the block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name not in IGNORED_OPS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def _first_token(model, inputs: dict) -> None:
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=False)


def count_ops(model, inputs: dict) -> Counter[str]:
    """ATen ops of one ``generate(max_new_tokens=1)`` call on the model as it is now."""
    with OpCounter() as counter:
        _first_token(model, inputs)
    return counter.ops


def _kernel_launches(model, inputs: dict) -> int:
    """CUDA kernel launches of one first-token call (runtime launch events of ``torch.profiler``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _first_token(model, inputs)
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if "LaunchKernel" in e.key or "cuLaunch" in e.key)


def _syncs_in_vtr(model, inputs: dict) -> bool:
    """Whether vtr's own sections forced a host↔device sync (CUDA's sync debug mode, set to error while
    a vtr section that is not the model's encoder runs). A call that fails under the check but runs
    without it failed on a sync; one that fails both ways raises its own error here."""
    try:
        with recording(lambda: None, sync_check=True):
            _first_token(model, inputs)
    except RuntimeError:
        _first_token(model, inputs)
        return True
    return False


@dataclass(frozen=True)
class OverheadRow:
    method: str
    budget: str
    visual_in: int
    visual_llm: int
    ops: int  # dispatched beyond the unwrapped model
    host_ms: float | None  # median time in vtr's sections; None unwrapped
    launches: int | None = None  # CUDA only, beyond the unwrapped model
    syncs: bool | None = None  # CUDA only
    top_ops: tuple[tuple[str, int], ...] = ()  # the ops vtr adds most of


def _host_ms(model, inputs: dict, repeats: int) -> float:
    sync = device_sync(model.device)
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        with recording(sync) as recorder:
            _first_token(model, inputs)
        times.append(recorder.vtr_ms)
    return statistics.median(times[1:])


def _visual(model) -> tuple[int, int]:
    sample = vtr.stats(model).samples[0]
    return sample.visual_before, sample.visual_after


def measure_overhead(model, inputs: dict, methods: list[str], budget: int | float | None, repeats: int = 5,
                     **options: Any) -> list[OverheadRow]:
    """One row per method (``"none"``: vtr's engine keeping every token) on an unwrapped model; ``budget``
    ``None`` runs each method at its own default."""
    if vtr.is_wrapped(model):
        raise ValueError("measure_overhead wraps the model itself; pass an unwrapped model")
    on_cuda = torch.device(model.device).type == "cuda"
    _first_token(model, inputs)  # warm-up: lazy inits must not count as anyone's ops
    base_ops = count_ops(model, inputs)
    base_launches = _kernel_launches(model, inputs) if on_cuda else None
    rows = []
    for method in methods:
        kwargs = {"budget": budget} if budget is not None and vtr.methods.takes_budget(method) else {}
        with vtr.reduced(model, method, **kwargs, **options):
            _first_token(model, inputs)
            ops = count_ops(model, inputs)
            extra = ops - base_ops
            rows.append(OverheadRow(
                method, str(kwargs.get("budget", "default" if vtr.methods.takes_budget(method) else "-")),
                *_visual(model),
                ops=ops.total() - base_ops.total(), host_ms=_host_ms(model, inputs, repeats),
                launches=_kernel_launches(model, inputs) - base_launches if on_cuda else None,
                syncs=_syncs_in_vtr(model, inputs) if on_cuda else None,
                top_ops=tuple(extra.most_common(4))))
    return rows


def format_overhead(rows: list[OverheadRow]) -> str:
    """A markdown table of the rows."""
    cuda = any(r.launches is not None for r in rows)
    header = ["method", "budget", "visual in→LLM", "ops beyond model", "vtr host ms", *(
        ["launches beyond model", "host syncs in vtr"] if cuda else []), "most added ops"]
    body = []
    for r in rows:
        cells = [r.method, r.budget, f"{r.visual_in}→{r.visual_llm}", f"{r.ops:+d}",
                 "-" if r.host_ms is None else f"{r.host_ms:.2f}"]
        if cuda:
            cells += [f"{r.launches:+d}", "yes" if r.syncs else "no"]
        cells.append(", ".join(f"{name.removeprefix('aten.')} {n}" for name, n in r.top_ops))
        body.append(cells)
    line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, body)])
