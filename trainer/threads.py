"""How many torch threads CPU work takes on a machine other jobs keep busy (train, demo, transformers generation)."""

from __future__ import annotations

import os

from steam_persona.common.console import console


def threads_for_load(load: float | None = None, work: str = "training") -> int:
    """CPU work on a busy machine: when the 1-minute load average (``load``, else ``os.getloadavg()``)
    exceeds half the usable cores, use one torch thread and say so once: torch's threads wait on each other
    while other jobs hold the cores (8-20x slower steps; docs/real-run.md has the figures). ``OMP_NUM_THREADS``
    set by the user is left alone, and so is a process already at one thread (no second warning). Returns the
    torch threads training uses (chosen once, at the start: a job started later still slows a run that took
    two). ``train`` (CPU only), ``demo`` and the transformers generation of ``chat`` / ``eval`` (``work``
    names it in the line) call it."""
    import torch

    from steam_persona.common.arguments import usable_cores

    cores = usable_cores()
    load = os.getloadavg()[0] if load is None else load
    if load > cores / 2 and not os.environ.get("OMP_NUM_THREADS") and torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        console.print(f"[yellow]this machine is busy (load average {round(load, 2)} on {cores} cores): {work} "
                      "with one thread, which is much faster then; set OMP_NUM_THREADS to choose[/yellow]")
    return torch.get_num_threads()
