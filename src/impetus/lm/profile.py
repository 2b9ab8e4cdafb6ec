"""Where a sampling call's time goes (issue 26): the torch profiler's CPU events, split by the
``impetus.*`` ranges the HF sampler marks (``record_function``) and, inside the model's forward, by op.

Parts: the decoding forward's matmuls, its attention over the cache, its other ops and its Python
(the HF module code between ops); the prefill forwards; nucleus sampling over the vocabulary (with
the recorded statistics it computes); cache compaction and merging; and everything outside those
ranges (the sampler's per-row Python: stop strings, bookkeeping, appending recorded states).
"""

from __future__ import annotations

import time
from typing import Any, Callable

_MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")
_ATTENTION = ("scaled_dot_product", "flash_attention", "aten::_efficient_attention", "aten::softmax")

PARTS = ("forward: matmuls", "forward: attention", "forward: other ops", "forward: Python",
         "prefill", "nucleus sampling + statistics", "cache compact/merge", "outside the marked ranges")


def _label(event: Any) -> str | None:
    """The outermost ``impetus.*`` range an event runs in (None: outside every range)."""
    found = None
    while event is not None:
        if event.name.startswith("impetus."):
            found = event.name
        event = event.cpu_parent
    return found


def _part(event: Any, label: str | None) -> str | None:
    if label is None:
        return None
    if label == "impetus.forward":
        if event.name == label:
            return "forward: Python"
        if event.name.startswith(_MATMUL) or "mkldnn" in event.name or "onednn" in event.name:
            return "forward: matmuls"
        if any(k in event.name for k in _ATTENTION):
            return "forward: attention"
        return "forward: other ops"
    return {"impetus.prefill": "prefill", "impetus.nucleus": "nucleus sampling + statistics",
            "impetus.cache": "cache compact/merge"}.get(label)  # any other range: the remainder


def profile_call(fn: Callable[[], Any]) -> tuple[dict[str, float], float]:
    """Run ``fn`` under the CPU profiler; return the seconds of each of :data:`PARTS` (their sum is
    the call's wall time) and the wall time. Self times are summed, so nested ops count once."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    seconds = dict.fromkeys(PARTS, 0.0)
    for event in prof.events():
        part = _part(event, _label(event))
        if part is not None:
            seconds[part] += event.self_cpu_time_total / 1e6
    seconds["outside the marked ranges"] = max(0.0, wall - sum(seconds.values()))
    return seconds, wall


def format_profile(seconds: dict[str, float], wall: float, title: str) -> str:
    """A markdown table of :func:`profile_call`'s split: seconds and share of the wall time."""
    lines = [f"{title} (wall {wall:.2f} s under the profiler)", "", "| part | s | share |", "|---|---:|---:|"]
    lines += [f"| {part} | {s:.2f} | {100 * s / wall:.1f}% |" for part, s in seconds.items()]
    return "\n".join(lines)


def format_profiles(profiles: dict[str, tuple[dict[str, float], float]], title: str) -> str:
    """:func:`format_profile` for several runs side by side (``{column: (seconds, wall)}``, e.g. one
    per dtype): seconds and share of each run's wall time per part."""
    names = list(profiles)
    head = "| part | " + " | ".join(f"{n} s | {n} share" for n in names) + " |"
    lines = [title, "", head, "|---|" + "---:|---:|" * len(names)]
    for part in PARTS:
        cells = " | ".join(f"{profiles[n][0][part]:.2f} | {100 * profiles[n][0][part] / profiles[n][1]:.1f}%"
                           for n in names)
        lines.append(f"| {part} | {cells} |")
    lines.append("| wall under the profiler | " + " | ".join(f"{profiles[n][1]:.2f} | " for n in names) + " |")
    return "\n".join(lines)
