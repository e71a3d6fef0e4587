"""Multi-GPU (and multi-process CPU) training: thin glue over ``torch.distributed`` and DDP.

There is no distribution layer of our own. The engines are PyTorch's:

* **launch**: ``torchrun --nproc_per_node N`` (``torch.distributed.run``), ``accelerate launch --multi_gpu``
  (which calls the same ``torch.distributed.run``), or ``steam-train train --nproc_per_node N``, which
  re-runs the same training under ``torch.distributed.run --standalone`` (:func:`relaunch`). Every
  launcher sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``, and
  :func:`init` joins the process group from them (``env://``): ``nccl`` on CUDA, ``gloo`` on CPU.
* **gradients**: ``torch.nn.parallel.DistributedDataParallel`` (:func:`wrap`) all-reduces (averages) the
  LoRA gradients during the backward of the last micro-batch of each optimizer step; the earlier
  micro-batches run under ``no_sync`` (:func:`sync_grads`), as HF Trainer / accelerate do for gradient
  accumulation. Each process's loss is scaled by ``world_size / tokens of the whole step`` so that
  DDP's average equals the one-process gradient at the same global batch (the loss is the sum over
  all learned tokens of the step divided by their count, as HF Trainer's ``num_items_in_batch``).
* **data**: every optimizer step takes ``gradient_accumulation_steps × world_size`` micro-batches of
  the seeded per-epoch permutation (``steam_persona.trainer.train.StepPlan``); process ``r`` trains on micro-batches
  ``r, r + world, …`` of them. Each sample is used once per epoch across all processes, and the
  samples of a step do not depend on how they are split, so a checkpoint resumes on another number of
  processes (:func:`accum_for_resume` keeps the micro-batches per step constant).
* **devices**: process ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``; 4-bit/8-bit bitsandbytes weights are
  loaded there directly (``device_map={"": "cuda:LOCAL_RANK"}`` in ``steam_persona.trainer.model.load_base``), the
  QLoRA recipe for DDP (every GPU holds the whole 4-bit base; 7B ≈ 5 GiB).
* only rank 0 logs, plots, evaluates and saves (``steam_persona.trainer.train.run``).

FSDP (sharding the 4-bit base across GPUs with ``bnb_4bit_quant_storage`` = the compute dtype) is not
wired: it pays only when the 4-bit base does not fit one GPU, and needs an FSDP wrap policy, mixed
precision policy and a gathered state dict for saving. ``accelerate launch`` with an FSDP or DeepSpeed
config is refused with a clear error instead of silently running DDP (see docs/multi-gpu.md).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ContextManager, Iterator

import click

from steam_persona.common.errors import UserError

#: Set (unless the user set them) in every process we launch or join: NVLink SHARP multicast off in NCCL,
#: PyTorch symmetric memory and NVSHMEM. DDP's all-reduce of a few MB of LoRA gradients gains nothing from
#: it, and on shared or virtualised multi-GPU hosts (containers, Firecracker VMs, MIG) creating multicast
#: objects can fail, hang, or leave the host's GPUs unusable for others (the device docs require it off).
NCCL_ENV_DEFAULTS = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

_owned_group = False


def rank_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the launcher's environment; ``(0, 1, 0)`` when not launched."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def launched() -> bool:
    """True inside a process started by torchrun / accelerate launch (``WORLD_SIZE`` is set)."""
    return "WORLD_SIZE" in os.environ


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def init(device: str) -> tuple[int, int]:
    """Join the process group of a multi-process launch; returns ``(rank, world_size)``.

    Does nothing (and returns ``(0, 1)``) for a single process. Otherwise sets :data:`NCCL_ENV_DEFAULTS`,
    selects ``cuda:LOCAL_RANK`` (before NCCL starts) and calls ``init_process_group`` with ``nccl`` for a
    CUDA ``device`` and ``gloo`` for ``"cpu"``. The group is destroyed by :func:`finish` (or at exit).

    Args:
        device: the training device of this process, ``"cpu"`` or ``"cuda:N"`` (``steam_persona.trainer.train.resolve_precision``).

    Raises:
        UserError: launched with an accelerate FSDP/DeepSpeed config (not wired), or more CUDA processes
            on this host than GPUs.
    """
    global _owned_group
    rank, world, local = rank_world()
    if world <= 1:
        return 0, 1
    for engine in ("FSDP", "DEEPSPEED"):
        if _truthy(f"ACCELERATE_USE_{engine}"):
            raise UserError(f"accelerate launch: {engine} is not wired in steam-train train (QLoRA runs as DDP: "
                            "every GPU holds the 4-bit base); launch with `accelerate launch --multi_gpu` or torchrun")
    for k, v in NCCL_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    import torch
    import torch.distributed as dist

    if dist.is_initialized():  # the launcher's script (or accelerate) already joined
        return dist.get_rank(), dist.get_world_size()
    cuda = device.startswith("cuda")
    if cuda:
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local}: this host has {torch.cuda.device_count()} GPU(s); start at most "
                            "that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    _owned_group = True
    atexit.register(_destroy)
    return dist.get_rank(), dist.get_world_size()


def _active() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # torch without distributed support
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _destroy() -> None:
    global _owned_group
    if _owned_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _owned_group = False


def barrier() -> None:
    """Wait for every process (no-op for one process)."""
    if _active():
        import torch.distributed as dist

        dist.barrier()


def finish() -> None:
    """End of a run: wait until rank 0 has saved, then leave the process group if :func:`init` made it."""
    barrier()
    _destroy()


def wrap(model: Any, device: str) -> Any:
    """``DistributedDataParallel(model)`` in a multi-process run, else ``model`` itself.

    Only the trainable (LoRA) parameters take part in the gradient all-reduce; the frozen (4-bit) base is
    identical on every process by construction (same file, deterministic quantization) and is left out
    of DDP's start-up broadcast, which would otherwise copy the whole base over the wire once. So are the
    buffers (rotary tables; causal LMs have no batch norm to keep in sync).
    """
    if not _active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    class _DDP(DistributedDataParallel):
        # peft's accessor, so code that looks for the *ForCausalLM (steam_persona.trainer.accel) finds it through the wrapper
        def get_base_model(self) -> Any:
            inner = self.module
            return inner.get_base_model() if hasattr(inner, "get_base_model") else inner

    frozen = [n for n, p in model.named_parameters() if not p.requires_grad] + [n for n, _ in model.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
    ids = [int(device.split(":")[1])] if device.startswith("cuda:") else None
    return _DDP(model, device_ids=ids)


def sync_grads(model: Any, last: bool) -> ContextManager:
    """Context for one micro-batch's forward + backward: ``no_sync()`` unless it is the step's ``last``
    (gradients then accumulate locally and are all-reduced once per optimizer step)."""
    if last or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def all_reduce_sum(values: list[float], device: str) -> list[float]:
    """Sum a few numbers (step loss, tokens, samples) over all processes; the input itself for one process."""
    if not _active():
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def accum_for_resume(ckpt: Path, accum: int, world: int) -> int:
    """``gradient_accumulation_steps`` that keeps a checkpoint's micro-batches per optimizer step when it is
    resumed on another number of processes (so each step trains on the same samples, the LR schedule and
    the step count stay the same, and the loss curve continues the original run).

    A checkpoint trained with ``A`` accumulation steps on ``W`` processes resumes on ``world`` processes
    with ``A × W / world``. Checkpoints without ``world_size`` in ``trainer_state.json``, or resumed on the
    same number of processes, keep ``accum``.

    Raises:
        UserError: ``A × W`` micro-batches per step cannot be split evenly over ``world`` processes.
    """
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    saved_world = int(state.get("world_size", world))
    if saved_world == world:
        return accum
    per_step = int(state.get("gradient_accumulation_steps", accum)) * saved_world
    if per_step % world:
        raise UserError(f"{ckpt}: trained with {per_step} micro-batches per optimizer step "
                        f"({per_step // saved_world} accumulation steps × {saved_world} processes), which "
                        f"{world} processes cannot split evenly; resume with a process count that divides {per_step}")
    from steam_persona.common.console import console

    if rank_world()[0] == 0:
        console.print(f"resuming a {saved_world}-process checkpoint on {world}: gradient_accumulation_steps "
                      f"{per_step // world} keeps {per_step} micro-batches per step")
    return per_step // world


class WorkersStopped(KeyboardInterrupt):
    """A ``--nproc_per_node`` launch stopped by Ctrl-C or a stop signal: its workers were stopped as by Ctrl-C, and
    rank 0 said where (exit 128 + the signal's number)."""


def _not_an_agent_stop_line(record: logging.LogRecord) -> bool:
    """False for torchrun's agent's own lines when it stops its workers (each worker says what it does)."""
    return record.msg not in ("Received %s death signal, shutting down workers", "Sending process %s closing signal %s")


@contextmanager
def _stop_signals_as_ctrl_c() -> Iterator[None]:
    """While torchrun's agent runs here (with ``--signals_to_handle SIGINT,SIGQUIT``): it handles SIGINT as it does,
    stopping the workers with the same signal and raising ``SignalException`` once they ended; SIGTERM and SIGHUP
    are a Ctrl-C to it, so the workers stop as on Ctrl-C (rank 0 says where; the default SIGTERM would end them
    without a word). The handlers before it come back after; the agent's own stop lines are not logged."""
    from steam_persona.common.errors import STOP_SIGNALS, stopped_by

    def as_ctrl_c(signum: int, frame: object) -> None:
        stopped_by(signum)  # the launching process still exits 128 + its number
        signal.raise_signal(signal.SIGINT)

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGQUIT) + STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        if handlers[sig] is not signal.SIG_IGN:
            signal.signal(sig, as_ctrl_c)
    agent_logs = [logging.getLogger(f"torch.distributed.elastic.{name}.api")
                  for name in ("agent.server", "multiprocessing")]
    for log in agent_logs:
        log.addFilter(_not_an_agent_stop_line)
    try:
        yield
    finally:
        for log in agent_logs:
            log.removeFilter(_not_an_agent_stop_line)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


class WorkerFailed(click.ClickException):
    """A worker of a ``--nproc_per_node`` launch crashed (not a user error): exit code 1, one line; the
    worker's own traceback is printed above it."""

    exit_code = 1


def relaunch(cfg: Any, nproc: int) -> dict[str, Any]:
    """Run ``steam-train train`` with ``cfg`` as ``nproc`` processes under ``torch.distributed.run`` and wait.

    The same as ``torchrun --standalone --nproc_per_node N -m steam_persona train CFG.yaml``, with torchrun's
    agent running in this process (so a failed worker gives our one-line error, not torchrun's traceback).
    The resolved config goes to the workers as a temporary YAML file; :data:`NCCL_ENV_DEFAULTS` are set in
    their environment. Workers inherit this process's working directory, so relative paths mean the same.

    Returns:
        the run's ``all_results.json`` (written by rank 0).

    Raises:
        UserError: more processes than GPUs on a CUDA host, or the workers stopped on a user error
            (exit 2; their one-line message is printed above).
        WorkerFailed: a worker crashed otherwise (its traceback is printed above).
    """
    import torch
    import yaml
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from steam_persona.common import config

    if torch.cuda.is_available() and not cfg.use_cpu and nproc > torch.cuda.device_count():
        raise UserError(f"--nproc_per_node {nproc}: this host has {torch.cuda.device_count()} GPU(s); use at most "
                        "that many (one process per GPU)")
    for k, v in NCCL_ENV_DEFAULTS.items():  # the agent passes this process's environment to the workers
        os.environ.setdefault(k, v)
    with tempfile.TemporaryDirectory(prefix="steam-train-") as tmp:
        cfg_file = Path(tmp) / "train.yaml"
        cfg_file.write_text(yaml.safe_dump(config.to_dict(cfg), allow_unicode=True, sort_keys=False), encoding="utf-8")
        args = torchrun.get_args_parser().parse_args(
            ["--standalone", f"--nproc_per_node={nproc}", "--signals_to_handle=SIGINT,SIGQUIT",
             "-m", "steam_persona", "train", str(cfg_file)])
        try:
            with _stop_signals_as_ctrl_c():
                torchrun.run(args)
        except SignalException:  # the agent stopped the workers with the signal and waited for them
            raise WorkersStopped from None
        except ChildFailedError as e:
            rank, first = e.get_first_failure()  # the root cause; the agent then stops the others (SIGTERM)
            if first.exitcode == UserError.exit_code:
                raise UserError(f"{cfg.output_dir}: stopped; see the error above") from None
            raise WorkerFailed(f"{cfg.output_dir}: rank {rank} of the {nproc}-process run failed (exit code "
                               f"{first.exitcode}); see its error above") from None
    return json.loads((Path(cfg.output_dir) / "all_results.json").read_text(encoding="utf-8"))
