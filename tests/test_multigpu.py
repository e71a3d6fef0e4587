"""Multi-process training on CPU (gloo): 2 processes under torchrun against 1 process at the same global batch.

The 2-process runs are real launches (``python -m torch.distributed.run``, DDP over gloo) of QLoRA
(bitsandbytes 4-bit base, which works on CPU) on a tiny random Llama. This file is also the worker script of one of them (``__main__`` below): each rank records the
sample indices it trains on per step, the files it writes (``sys.addaudithook``), and rank 0's step losses.

What is asserted:
* the per-step loss of 2 processes × accumulation 1 equals 1 process × accumulation 2 (same global batch),
  and so do the final adapters;
* every sample is trained on exactly once per epoch, split over the ranks (a short last step included,
  where rank 1 has no micro-batch);
* only rank 0 writes to the output dir;
* a 2-process checkpoint resumes on 1 process, and a 1-process checkpoint on 2 (``--nproc_per_node 2``
  on the CLI, which re-launches itself through torchrun), both ending where the uninterrupted run ends;
* the resume rule and the FSDP refusal in :mod:`steam_persona.trainer.distributed`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
N_SAMPLES = 13  # after 8 of the first 21 are dropped at cutoff_len 160: 7 micro-batches of ≤ 2 per epoch, so
                # 4 steps of 2 micro-batches, the last one short (rank 1 has none)
STEPS = 8       # 2 epochs


def _cfg(model_dir: Path, data: Path, out: Path, **kw):
    from steam_persona.common import config
    from steam_persona.trainer.train import TrainConfig

    base = {"model_name_or_path": str(model_dir), "dataset": [str(data)], "output_dir": str(out),
            "max_samples": 21, "cutoff_len": 160, "system": "", "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1, "num_train_epochs": 2, "learning_rate": 2e-2, "save_steps": 3,
            "logging_steps": 1, "lora_rank": 4, "quantization_bit": 4, "disable_gradient_checkpointing": True, "seed": 7}
    return config.build(TrainConfig, {**base, **kw})


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread for the in-process runs, as torchrun gives each worker (OMP_NUM_THREADS=1): on a
    busy 2-core CI box, 2 threads per process run the tiny model 5× slower (spinning OpenMP threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama_dir: Path, seed_dataset: Path) -> dict:
    """The reference 1-process run (accumulation 2) and the recorded 2-process run (accumulation 1)."""
    from steam_persona.trainer.train import run

    tmp = tmp_path_factory.mktemp("multigpu")
    ref_losses: dict[int, float] = {}
    ref = run(_cfg(tiny_llama_dir, seed_dataset, tmp / "ref", gradient_accumulation_steps=2),
              callbacks=(lambda step, row: ref_losses.__setitem__(step, row["loss"]),))
    rec = tmp / "record"
    args = json.dumps({"model": str(tiny_llama_dir), "data": str(seed_dataset), "out": str(tmp / "ddp"),
                       "record": str(rec)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, args]
    p = subprocess.run(cmd, env=_env(), cwd=tmp, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    records = [json.loads((rec / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"tmp": tmp, "ref": ref, "ref_losses": ref_losses, "records": records, "model": tiny_llama_dir,
            "data": seed_dataset}


def test_two_processes_match_one_at_same_global_batch(runs) -> None:
    ref_losses, rank0 = runs["ref_losses"], runs["records"][0]
    ddp_losses = {int(k): v for k, v in rank0["losses"].items()}
    assert sorted(ddp_losses) == list(range(1, STEPS + 1)) == sorted(ref_losses)
    for s in ref_losses:
        assert ddp_losses[s] == pytest.approx(ref_losses[s], abs=1e-4), s
    assert ref_losses[STEPS] < ref_losses[1] - 0.05  # it learned something (lr 1e-3, 2 epochs)
    assert rank0["results"]["global_step"] == STEPS
    assert rank0["results"]["loss_last"] == pytest.approx(runs["ref"]["loss_last"], abs=1e-4)
    assert rank0["results"]["num_samples"] == N_SAMPLES
    # samples/s and tokens/s count both ranks' work (all-reduced): every sample twice in 2 epochs
    assert rank0["results"]["total_tokens"] == runs["ref"]["total_tokens"]
    # the gradients were all-reduced: the adapters after 8 steps are the 1-process ones
    a, b = _adapter(runs["tmp"] / "ref"), _adapter(runs["tmp"] / "ddp")
    assert a.keys() == b.keys() and len(a) == 2 * 7 * 2  # lora_A/B × 7 linears × 2 layers
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-4, k


def test_sharding_uses_every_sample_once_per_epoch(runs) -> None:
    from steam_persona.trainer.train import StepPlan

    per_rank = [{int(s): mbs for s, mbs in r["steps"].items()} for r in runs["records"]]
    assert sorted(per_rank[0]) == sorted(per_rank[1]) == list(range(STEPS))
    for epoch in range(2):
        used = [i for rank in per_rank for s in range(4 * epoch, 4 * epoch + 4) for mb in rank[s] for i in mb]
        assert sorted(used) == list(range(N_SAMPLES)), epoch  # all samples, each exactly once
    # the short last step of each epoch: rank 0 has the one micro-batch, rank 1 none
    assert [len(per_rank[0][s]) for s in range(STEPS)] == [1] * STEPS
    assert [len(per_rank[1][s]) for s in range(STEPS)] == [1, 1, 1, 0, 1, 1, 1, 0]
    # and per step the union is the 1-process step at accumulation 2 (same samples, any process count)
    one = StepPlan(N_SAMPLES, 2, 2, 2, -1, 7)
    for s in range(STEPS):
        assert sorted(per_rank[0][s] + per_rank[1][s]) == sorted(one.step(s)), s


def test_only_rank_zero_writes(runs) -> None:
    rank0, rank1 = runs["records"]
    assert rank1["writes"] == []
    written = {Path(p).name for p in rank0["writes"]}  # the audit hook sees rank 0's writes (positive control)
    assert {"trainer_log.jsonl", "run_config.yaml", "all_results.json", "training_loss.png", "checkpoint-3",
            "checkpoint-6", "checkpoint-8", "adapter_model.safetensors"} <= written
    out = runs["tmp"] / "ddp"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6", "checkpoint-8"]
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["current_steps"] for r in log] == list(range(1, STEPS + 1))  # one writer: no duplicated rows
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert (state["world_size"], state["gradient_accumulation_steps"], state["global_step"]) == (2, 1, 3)


def test_two_process_checkpoint_resumes_on_one(runs) -> None:
    from steam_persona.trainer.train import run

    losses: dict[int, float] = {}
    # the 2-process run's own flags (accumulation 1): resumed on 1 process it takes accumulation 2
    res = run(_cfg(runs["model"], runs["data"], runs["tmp"] / "resume-1",
                   resume_from_checkpoint=str(runs["tmp"] / "ddp" / "checkpoint-3")),
              callbacks=(lambda step, row: losses.__setitem__(step, row["loss"]),))
    assert sorted(losses) == list(range(4, STEPS + 1))
    for s in losses:
        assert losses[s] == pytest.approx(runs["ref_losses"][s], abs=1e-4), s
    assert res["loss_last"] == pytest.approx(runs["ref"]["loss_last"], abs=1e-4)


def test_one_process_checkpoint_resumes_on_two_via_cli(runs) -> None:
    out = runs["tmp"] / "resume-2"
    cmd = [sys.executable, "-m", "steam_persona", "train", "--model_name_or_path", str(runs["model"]),
           "--dataset", str(runs["data"]), "--output_dir", str(out), "--max_samples", "21",
           "--cutoff_len", "160", "--system", "", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
           "--num_train_epochs", "2", "--learning_rate", "2e-2", "--save_steps", "3", "--logging_steps", "1",
           "--lora_rank", "4", "--quantization_bit", "4", "--disable_gradient_checkpointing", "--seed", "7", "--nproc_per_node", "2",
           "--resume_from_checkpoint", str(runs["tmp"] / "ref" / "checkpoint-6")]
    p = subprocess.run(cmd, env=_env(), cwd=runs["tmp"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((out / "all_results.json").read_text())
    assert res["global_step"] == STEPS
    assert res["loss_last"] == pytest.approx(runs["ref"]["loss_last"], abs=1e-4)
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["current_steps"] for r in log] == [7, 8]
    for r in log:
        assert r["loss"] == pytest.approx(runs["ref_losses"][r["current_steps"]], abs=1e-4)
    ref_a, got = _adapter(runs["tmp"] / "ref"), _adapter(out)
    assert max((ref_a[k] - got[k]).abs().max().item() for k in ref_a) < 1e-4
    assert "gradient_accumulation_steps 1 keeps 2 micro-batches per step" in " ".join(p.stderr.split())


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_to_the_launching_process_stops_the_workers_as_ctrl_c(tiny_llama_dir: Path, seed_dataset: Path,
                                                                            tmp_path: Path, sig: str) -> None:
    """Trial 29: `--nproc_per_node 2` on Ctrl-C printed torchrun's SignalException traceback (exit 1), and on
    SIGTERM its workers died without a word. Now both reach the workers as Ctrl-C: rank 0 says where the run
    stopped, the launching process exits 128 + the signal's number with nothing more, and the lock and temp files are gone."""
    import signal

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "steam_persona", "train", "--model_name_or_path", str(tiny_llama_dir),
           "--dataset", str(seed_dataset), "--output_dir", str(out), "--max_samples", "40", "--cutoff_len", "160",
           "--per_device_train_batch_size", "1", "--max_steps", "200", "--save_steps", "1", "--logging_steps", "1",
           "--lora_rank", "4", "--nproc_per_node", "2"]
    p = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    said = []
    for line in p.stdout:
        if "train step 2/200" in line and not said:
            p.send_signal(getattr(signal, sig))
            said.append(line)
        elif said:
            said.append(line)
    assert p.wait(timeout=120) == 128 + getattr(signal, sig), "".join(said)
    stopped = [x for x in said if x.startswith("interrupted ")]
    assert len(stopped) == 1 and "rerun the same command to resume from" in stopped[0], "".join(said)
    assert not any(w in "".join(said) for w in ("Traceback", "forced quit", "death signal", "closing signal")), said
    assert not (tmp_path / "run.lock").exists()
    assert not [x.name for x in out.iterdir() if x.name.startswith(".")]


def test_accum_for_resume_rule(tmp_path: Path) -> None:
    from steam_persona.trainer.distributed import accum_for_resume
    from steam_persona.common.errors import UserError

    ck = tmp_path / "checkpoint-5"
    ck.mkdir()
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 5, "world_size": 4, "gradient_accumulation_steps": 2}))
    assert accum_for_resume(ck, 2, 4) == 2   # same process count: the flag as given
    assert accum_for_resume(ck, 2, 1) == 8   # 8 micro-batches per step on 1 process
    assert accum_for_resume(ck, 2, 8) == 1
    with pytest.raises(UserError, match="8 micro-batches per optimizer step.*3 processes cannot split"):
        accum_for_resume(ck, 2, 3)
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 5}))  # single-process checkpoint of old
    assert accum_for_resume(ck, 3, 2) == 3


def test_fsdp_launch_is_refused(monkeypatch) -> None:
    from steam_persona.trainer import distributed
    from steam_persona.common.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UserError, match="FSDP is not wired"):
        distributed.init("cpu")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init("cpu") == (0, 1)
    assert distributed.NCCL_ENV_DEFAULTS["NCCL_NVLS_ENABLE"] == "0"


def test_each_rank_loads_4bit_weights_on_its_own_gpu(monkeypatch, tiny_llama_dir: Path) -> None:
    """Placement rule on a CUDA host (no GPU here: torch.cuda and from_pretrained are stubbed): process
    LOCAL_RANK trains on cuda:LOCAL_RANK and bitsandbytes loads the 4-bit base straight onto it."""
    import torch
    import transformers

    from steam_persona.trainer import distributed
    from steam_persona.common import config
    from steam_persona.trainer import model as model_lib
    from steam_persona.common.errors import UserError
    from steam_persona.trainer.train import TrainConfig, resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    device, dtype, amp = resolve_precision(config.build(TrainConfig, {"bf16": True}))
    assert (device, dtype, amp) == ("cuda:1", torch.bfloat16, torch.bfloat16)
    seen = {}

    def fake_from_pretrained(path, **kwargs):
        seen.update(kwargs)
        return "model"

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    assert model_lib.load_base(str(tiny_llama_dir), quantization_bit=4, dtype=dtype, device=device) == "model"
    assert seen["device_map"] == {"": "cuda:1"}
    q = seen["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_compute_dtype == torch.bfloat16 and q.bnb_4bit_quant_type == "nf4"
    # more processes than GPUs on the host: a one-line error before NCCL starts
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    for k in distributed.NCCL_ENV_DEFAULTS:  # restored (unset) after the test
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(UserError, match="LOCAL_RANK 1: this host has 1 GPU"):
        distributed.init(device)
    assert os.environ["NCCL_NVLS_ENABLE"] == "0"  # set before the process group would start


# ------------------------------------------------------------------ worker (run by torchrun, 2 processes)

def _worker(args: dict) -> None:
    from steam_persona.trainer import train

    out = Path(args["out"]).resolve()
    rank = int(os.environ["RANK"])
    writes: list[str] = []

    def audit(event: str, a: tuple) -> None:
        # every file this process opens for writing, creates, renames or deletes under the output dir
        if event == "open":
            path, mode, flags = a
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            paths = [path] if writing else []
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            paths = [a[0]]
        elif event == "os.rename":
            paths = [a[0], a[1]]
        else:
            return
        for p in paths:
            if isinstance(p, (str, os.PathLike)) and str(Path(os.fsdecode(p)).resolve()).startswith(str(out)):
                writes.append(os.fsdecode(p))

    steps: dict[int, list] = {}
    real_step = train.StepPlan.step

    def recording_step(self, s):
        mbs = real_step(self, s)
        steps[s] = mbs
        return mbs

    train.StepPlan.step = recording_step
    losses: dict[int, float] = {}
    sys.addaudithook(audit)
    results = train.run(_cfg(Path(args["model"]), Path(args["data"]), out),
                        callbacks=(lambda step, row: losses.__setitem__(step, row["loss"]),))
    rec = Path(args["record"])
    rec.mkdir(exist_ok=True)
    (rec / f"rank{rank}.json").write_text(json.dumps(
        {"steps": steps, "losses": losses, "writes": sorted(set(writes)), "results": results}))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _worker(json.loads(sys.argv[1]))
