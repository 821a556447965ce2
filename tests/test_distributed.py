"""Tests for scratchlm.distributed (Chapter 14): sharding, ZeRO arithmetic, ring all-reduce, DCP
checkpoints, and DDP / FSDP2 under a real ``torchrun`` launch against single-process training.

The torchrun tests share ONE launch of 2 processes (gloo, CPU): `launch_runs` (run_many) runs
DDP and FSDP2, with and without gradient accumulation, and a resume from a 1-process checkpoint;
the single-process references (and the resume from the 2-process checkpoint) run in this process.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.data.lm import make_lm_get_batch
from scratchlm.distributed import (
    PRECISIONS,
    DistEnv,
    all_reduce_mean,
    backend_for,
    fsdp_expected_memory,
    fsdp_shard_numel,
    init_distributed,
    latest_checkpoint,
    launch_runs,
    load_sharded_checkpoint,
    make_sharded_get_batch,
    measure_memory,
    read_sharded_checkpoint_metadata,
    ring_allreduce_seconds,
    save_sharded_checkpoint,
    shard_batch,
    speedup,
    step_seconds,
    torchrun_command,
    train_distributed,
    transformer_blocks,
    wrap_model,
    zero_memory,
)
from scratchlm.distributed.train_gpt import run
from scratchlm.errors import CheckpointError
from scratchlm.models.gpt import GPT, GPTConfig
from scratchlm.training import TrainConfig, adamw_with_decay_groups, build_optimizer, causal_lm_loss, train

ROOT = Path(__file__).resolve().parents[1]
SINGLE = DistEnv(0, 0, 1, torch.device("cpu"), None, False)
COMMON = ["--steps", "4", "--batch-size", "8", "--block-size", "16", "--n-layers", "2", "--n-heads", "2",
          "--d-model", "32", "--warmup", "2", "--lr", "3e-3", "--eval-batches", "2", "--device", "cpu", "--quiet",
          "--dtype", "float64"]
# float64: rounding (~1e-16) is far too small to hide a real difference. In float32, Adam amplifies the
# rounding of near-zero gradient entries (its update is lr·m/(√v + ε)), so runs that are equal in exact
# arithmetic differ by up to ~1e-5 after a few steps at lr 3e-3: checked separately with a looser bound.
TOL = 1e-9
LAUNCH_TIMEOUT_S = 300  # generous for a loaded CI machine; the launch takes ~10 s on 2 idle cores


# ---- sharding the global batch ----------------------------------------------------------------------
def test_shards_of_every_rank_concatenate_to_the_global_batch():
    x = torch.arange(24).view(6, 4)  # (B, T)
    batch = {"input_ids": x, "labels": x + 100, "pair": (x, x * 2)}
    shards = [shard_batch(batch, r, 3) for r in range(3)]
    torch.testing.assert_close(torch.cat([s["input_ids"] for s in shards]), x)
    torch.testing.assert_close(torch.cat([s["pair"][1] for s in shards]), x * 2)
    assert shards[1]["labels"].shape == (2, 4) and int(shards[1]["labels"][0, 0]) == 108


@pytest.mark.parametrize("args, error, match", [
    (((torch.zeros(5, 2),), 0, 2), ValueError, "not divisible by world_size=2"),
    (((torch.zeros(4, 2), torch.zeros(2, 2)), 0, 2), ValueError, "same number of rows"),
    (((torch.zeros(4, 2),), 2, 2), ValueError, "rank must be an int"),
    ((("text",), 0, 1), TypeError, "found no tensor"),
    ((torch.tensor(1.0), 0, 1), ValueError, "0-d tensor"),
])
def test_shard_batch_rejects_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        shard_batch(*args)


def test_sharded_get_batch_fails_at_construction_when_batch_does_not_split():
    def get_batch(split, index):
        return torch.zeros(6, 3), torch.zeros(6, 3)

    with pytest.raises(ValueError, match="not divisible by world_size=4"):
        make_sharded_get_batch(get_batch, 0, 4)
    sharded = make_sharded_get_batch(get_batch, 1, 3)
    assert sharded("val", 7)[0].shape == (2, 3)


def test_all_reduce_mean_outside_a_group_is_the_value():
    v = torch.tensor([1.0, 2.0])
    out = all_reduce_mean(v)
    torch.testing.assert_close(out, v)
    assert out.data_ptr() != v.data_ptr()


# ---- ZeRO arithmetic ----------------------------------------------------------------------------------
def test_zero_memory_reproduces_the_zero_papers_figure_1():
    # Rajbhandari et al. (2020), Figure 1: 7.5 B parameters, N = 64, mixed precision with Adam (K = 12):
    # 120 GB (baseline), 31.4 GB (P_os), 16.6 GB (P_os+g), 1.88 GB (P_os+g+p).
    psi = 7_500_000_000
    expected = {0: 120.0, 1: 31.4, 2: 16.6, 3: 1.88}
    for stage, gb in expected.items():
        assert zero_memory(psi, 64, stage, "mixed").total / 1e9 == pytest.approx(gb, rel=0.005)  # 3 digits
    fp32 = zero_memory(1000, 4, 2, "fp32")
    assert (fp32.parameters, fp32.gradients, fp32.optimizer) == (4000, 1000, 2000)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_params=10, world_size=0, stage=0), "world_size"),
    (dict(num_params=10, world_size=2, stage=4), "stage"),
    (dict(num_params=10, world_size=2, stage=1, precision="fp8"), "precision"),
    (dict(num_params=-1, world_size=2, stage=1), "num_params"),
])
def test_zero_memory_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        zero_memory(**kwargs)


def test_fsdp_shard_numel_is_torch_chunk_along_dim0():
    for shape in [(65, 32), (7,), (3, 5, 2), (1, 4), (128,)]:
        for n in (1, 2, 3, 4, 8):
            chunks = torch.zeros(shape).chunk(n, dim=0)
            got = [fsdp_shard_numel(shape, n, r) for r in range(n)]
            assert got == [c.numel() for c in chunks] + [0] * (n - len(chunks)), (shape, n)
            assert sum(got) == math.prod(shape)


def test_measure_memory_of_an_unsharded_model_is_4_4_8_bytes_per_parameter():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layers=1, n_heads=2, d_model=16))
    opt = adamw_with_decay_groups(model.named_parameters(), learning_rate=1e-3, weight_decay=0.1,
                                  betas=(0.9, 0.99), fused=False)
    x = torch.randint(0, 20, (2, 8))
    model(x, labels=x).loss.backward()
    opt.step()
    psi = sum(p.numel() for p in model.parameters())  # the tied embedding once
    n_tensors = len(list(model.parameters()))
    m = measure_memory(model, opt)
    assert (m.parameters, m.gradients, m.optimizer) == (4 * psi, 4 * psi, 8 * psi)
    assert m.optimizer_other == 4 * n_tensors  # one fp32 step counter per parameter tensor
    assert m.parameters == zero_memory(psi, 1, 0).parameters
    assert fsdp_expected_memory(model, 1, 0).parameters == 4 * psi


# ---- ring all-reduce and the step-time model ------------------------------------------------------------
def simulate_ring_allreduce(buffers: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """Reduce-scatter then all-gather around a ring, chunk by chunk; returns results and bytes sent per rank."""
    n = len(buffers)
    chunks = [list(b.clone().chunk(n)) for b in buffers]
    sent = [0] * n
    for phase in ("reduce-scatter", "all-gather"):
        for step in range(n - 1):
            messages = []
            for r in range(n):  # rank r sends one chunk to rank r + 1
                c = (r - step + (0 if phase == "reduce-scatter" else 1)) % n
                messages.append(((r + 1) % n, c, chunks[r][c].clone()))
                sent[r] += chunks[r][c].numel() * chunks[r][c].element_size()
            for dest, c, payload in messages:
                chunks[dest][c] = chunks[dest][c] + payload if phase == "reduce-scatter" else payload
    return [torch.cat(c) for c in chunks], sent


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_ring_allreduce_time_counts_the_bytes_a_ring_sends(n):
    torch.manual_seed(n)
    buffers = [torch.randn(8 * 24) for _ in range(n)]  # S = 768 bytes, divisible into n chunks
    results, sent = simulate_ring_allreduce(buffers)
    total = torch.stack(buffers).sum(0)
    for r in results:
        torch.testing.assert_close(r, total)
    nbytes = buffers[0].numel() * 4
    bandwidth = 1e6
    assert sent == [sent[0]] * n
    assert ring_allreduce_seconds(nbytes, n, bandwidth) == pytest.approx(sent[0] / bandwidth)
    assert ring_allreduce_seconds(nbytes, 1, bandwidth) == 0.0


def test_step_model_overlap_and_scaling_regimes():
    # comm 2·(1/2)·100/100 = 1 s; compute 3 s hides it entirely with overlap 1, not at all with 0
    assert step_seconds(3.0, 2, 100, 100, overlap=1.0) == pytest.approx(3.0)
    assert step_seconds(3.0, 2, 100, 100, overlap=0.0) == pytest.approx(4.0)
    assert step_seconds(3.0, 2, 100, 100, overlap=0.0, strategy="fsdp") == pytest.approx(4.5)
    assert step_seconds(3.0, 2, 100, 100, scaling="strong") == pytest.approx(1.5 + 1.0)
    assert speedup(3.0, 2, 100, 100, overlap=1.0) == pytest.approx(2.0)  # weak scaling, comm hidden
    assert speedup(1.0, 1, 100, 100) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="overlap"):
        step_seconds(1.0, 2, 1, 1, overlap=1.5)
    with pytest.raises(ValueError, match="bandwidth"):
        ring_allreduce_seconds(1, 2, 0)


# ---- launching and wrapping -------------------------------------------------------------------------------
def test_init_distributed_without_torchrun_is_a_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = init_distributed()
    assert (env.rank, env.world_size, env.backend, env.is_main, env.distributed) == (0, 1, None, True, False)
    with pytest.raises(ValueError, match="device_type"):
        init_distributed("tpu")
    with pytest.raises(ValueError, match="device_type"):
        backend_for("mps")
    assert backend_for("cpu") == "gloo"


def test_torchrun_command_uses_this_interpreter_and_checks_arguments():
    cmd = torchrun_command(2, ["--steps", 3])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:] == ["--standalone", "--nproc_per_node", "2", "-m", "scratchlm.distributed.train_gpt",
                       "--steps", "3"]
    with pytest.raises(ValueError, match="nproc"):
        torchrun_command(0, [])
    with pytest.raises(ValueError, match="exactly one"):
        torchrun_command(1, [], module="a", script="b.py")


@pytest.mark.skipif(not hasattr(os, "killpg") or not Path("/proc").is_dir(), reason="needs POSIX process groups and /proc")
def test_a_stopped_launch_leaves_no_worker_behind(tmp_path):
    # What run_torchrun does on a timeout or an interrupt: stop torchrun's whole session, workers included.
    from scratchlm.distributed.launch import _stop_group

    pids = tmp_path / "pids"
    proc = subprocess.Popen(["bash", "-c", f"sleep 60 & echo $! > {pids}; sleep 60"], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        if pids.exists() and pids.read_text().strip():
            break
        time.sleep(0.05)
    child = int(pids.read_text())
    _stop_group(proc, grace_s=5)
    assert proc.returncode is not None
    time.sleep(0.2)
    stat = Path(f"/proc/{child}/stat")
    if stat.exists():  # gone, or a zombie waiting for a parent that does not reap (PID 1 in some containers)
        assert stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    else:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)


def test_wrap_model_checks_strategy_and_launch():
    model = GPT(GPTConfig(vocab_size=10, block_size=4, n_layers=2, n_heads=1, d_model=8))
    assert transformer_blocks(model) == list(model.transformer.h)
    assert wrap_model(model, "single", SINGLE) is model
    with pytest.raises(ValueError, match="torchrun"):
        wrap_model(model, "ddp", SINGLE)
    with pytest.raises(ValueError, match="strategy must be one of"):
        wrap_model(model, "zero", SINGLE)
    with pytest.raises(ValueError, match="world_size=2"):
        wrap_model(model, "single", DistEnv(0, 0, 2, torch.device("cpu"), "gloo", False))


# ---- sharded checkpoints in one process ---------------------------------------------------------------------
def test_sharded_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)

    def make():
        m = GPT(GPTConfig(vocab_size=12, block_size=8, n_layers=1, n_heads=2, d_model=8))
        return m, adamw_with_decay_groups(m.named_parameters(), learning_rate=1e-2, weight_decay=0.1,
                                          betas=(0.9, 0.99), fused=False)

    model, opt = make()
    x = torch.randint(0, 12, (2, 8))
    model(x, labels=x).loss.backward()
    opt.step()
    path = save_sharded_checkpoint(tmp_path, model, opt, step=7, metadata={"note": "hi"})
    (tmp_path / ".step_00000009.tmp").mkdir()  # an interrupted write is never "latest"
    assert latest_checkpoint(tmp_path) == path and path.name == "step_00000007"
    doc = read_sharded_checkpoint_metadata(path)
    assert (doc["step"], doc["world_size"], doc["metadata"]) == (7, 1, {"note": "hi"})
    fresh, fresh_opt = make()
    assert not torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    load_sharded_checkpoint(path, fresh, fresh_opt)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt.state[p][key], fresh_opt.state[q][key], rtol=0, atol=0)
    assert latest_checkpoint(tmp_path / "nothing") is None
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_sharded_checkpoint_metadata(tmp_path / "missing")
    (path / "scratchlm.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(CheckpointError, match="malformed JSON"):
        read_sharded_checkpoint_metadata(path)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_sharded_checkpoint(tmp_path, model, opt, step=8, metadata={"bad": {1, 2}})


def test_train_distributed_checks_its_arguments():
    model = GPT(GPTConfig(vocab_size=10, block_size=4, n_layers=1, n_heads=1, d_model=8))
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(TypeError, match="TrainConfig"):
        train_distributed(model, opt, lambda s, i: None, causal_lm_loss, {"max_steps": 2})
    with pytest.raises(ValueError, match="start_step"):
        train_distributed(model, opt, lambda s, i: None, causal_lm_loss, TrainConfig(max_steps=2), start_step=3)


def test_train_distributed_in_one_process_equals_the_package_loop():
    # No process group: the written-out step must be train()'s step (same schedule, accumulation, clipping).
    data = {"train": torch.randint(0, 12, (500,)), "val": torch.randint(0, 12, (200,))}
    get_batch = make_lm_get_batch(data, batch_size=4, block_size=8, seed=3)
    cfg = TrainConfig(max_steps=5, warmup_steps=2, learning_rate=3e-3, grad_accum_steps=2, eval_every=0,
                      progress=False, fused=False)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(GPT(GPTConfig(vocab_size=12, block_size=8, n_layers=1, n_heads=2, d_model=16)))
    train(models[0], get_batch, causal_lm_loss, cfg)
    opt = build_optimizer(models[1], cfg)
    records = train_distributed(models[1], opt, get_batch, causal_lm_loss, cfg)
    assert [r.step for r in records] == [1, 2, 3, 4, 5]
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_script_refuses_ddp_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        run([*COMMON, "--strategy", "ddp"])


# ---- the real thing: 2 processes under torchrun --------------------------------------------------------------
def _skip_reason() -> str | None:
    dist = torch.distributed
    if not dist.is_available():
        return "this PyTorch build has no torch.distributed"
    if not dist.is_gloo_available():
        return "the gloo backend is not available in this PyTorch build"
    if importlib.util.find_spec("torch.distributed.run") is None:
        return "torchrun (torch.distributed.run) is not available"
    return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run every configuration once; return {name: (result JSON, trained weights)} and timings."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("dist")
    timings = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each torchrun worker (and fast on a busy 2-core machine)
    try:
        return _launch_all(out, timings)
    finally:
        torch.set_num_threads(threads)


def _launch_all(out: Path, timings: dict[str, float]):

    def single(name, extra):
        run([*COMMON, *extra, "--out", str(out / f"{name}.json"), "--params-out", str(out / f"{name}.safetensors")])

    t0 = time.perf_counter()
    single("single_a1", ["--grad-accum", "1"])
    single("single_a2", ["--grad-accum", "2", "--checkpoint-dir", str(out / "ck_single"), "--checkpoint-every", "2"])
    single("single_f32", ["--grad-accum", "2", "--dtype", "float32"])
    timings["single"] = time.perf_counter() - t0
    launches = {
        "ddp_a1": ["--strategy", "ddp", "--grad-accum", "1"],
        "ddp_a2": ["--strategy", "ddp", "--grad-accum", "2"],
        "fsdp_a1": ["--strategy", "fsdp", "--grad-accum", "1"],
        "fsdp_a2": ["--strategy", "fsdp", "--grad-accum", "2", "--checkpoint-dir", str(out / "ck_fsdp"),
                    "--checkpoint-every", "2"],
        "fsdp_from_1": ["--strategy", "fsdp", "--grad-accum", "2", "--resume", str(out / "ck_single" / "step_00000002")],
        "ddp_f32": ["--strategy", "ddp", "--grad-accum", "2", "--dtype", "float32"],
    }
    t0 = time.perf_counter()
    try:  # one launch for all of them: starting the processes costs more than these runs
        launch_runs(2, launches, out, common=COMMON, timeout_s=LAUNCH_TIMEOUT_S)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    timings["torchrun"] = time.perf_counter() - t0
    t0 = time.perf_counter()  # 2 -> 1: this process continues the 2-process FSDP run
    single("single_from_2", ["--grad-accum", "2", "--resume", str(out / "ck_fsdp" / "step_00000002")])
    timings["resume_2_to_1"] = time.perf_counter() - t0
    names = ["single_a1", "single_a2", "single_f32", "ddp_a1", "ddp_a2", "fsdp_a1", "fsdp_a2", "fsdp_from_1",
             "single_from_2", "ddp_f32"]
    results = {n: (json.loads((out / f"{n}.json").read_text()), load_file(out / f"{n}.safetensors")) for n in names}
    print(f"\n[test_distributed] seconds: {timings}")
    return results, out


def max_param_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("accum", [1, 2])
def test_two_processes_train_exactly_like_one(runs, strategy, accum):
    results, _ = runs
    ref_doc, ref = results[f"single_a{accum}"]
    doc, params = results[f"{strategy}_a{accum}"]
    assert (doc["world_size"], doc["backend"], doc["strategy"]) == (2, "gloo", strategy)
    assert doc["history"]["steps"] == [1, 2, 3, 4]
    assert max_param_diff(ref, params) < TOL
    for key in ("loss", "grad_norm"):  # the norm catches a missing 1/N, which Adam's update would hide
        for a, b in zip(ref_doc["history"][key], doc["history"][key], strict=True):
            assert a == pytest.approx(b, rel=TOL)
    assert doc["history"]["val_loss"][-1] == pytest.approx(ref_doc["history"]["val_loss"][-1], rel=TOL)


def test_in_float32_the_runs_agree_to_rounding(runs):
    results, _ = runs
    ref_doc, ref = results["single_f32"]
    doc, params = results["ddp_f32"]
    assert next(iter(params.values())).dtype == torch.float32
    assert 0 < max_param_diff(ref, params) < 1e-4
    for a, b in zip(ref_doc["history"]["grad_norm"], doc["history"]["grad_norm"], strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def test_the_equivalence_tolerance_can_fail(runs):
    # Different data (accumulation 1 vs 2) must exceed the tolerance by orders of magnitude,
    # and training must have moved the weights: otherwise the comparisons above prove nothing.
    results, _ = runs
    assert max_param_diff(results["single_a1"][1], results["single_a2"][1]) > 1e-3
    torch.manual_seed(1337)
    cfg = results["single_a1"][0]["model"]
    init = {k: v.double() for k, v in GPT(GPTConfig(**cfg)).state_dict().items()}
    assert max_param_diff(init, results["single_a1"][1]) > 1e-3


@pytest.mark.parametrize("name, saved_by", [("fsdp_from_1", 1), ("single_from_2", 2)])
def test_resume_across_world_sizes_continues_the_same_run(runs, name, saved_by):
    results, _ = runs
    ref_doc, ref = results["single_a2"]
    doc, params = results[name]
    assert doc["resumed"]["step"] == 2 and doc["resumed"]["saved_world_size"] == saved_by
    assert doc["history"]["steps"] == [1, 2, 3, 4]  # steps 1-2 come from the checkpoint's history
    for a, b in zip(ref_doc["history"]["loss"], doc["history"]["loss"], strict=True):
        assert a == pytest.approx(b, rel=TOL)
    assert max_param_diff(ref, params) < TOL


@pytest.mark.parametrize("change, field", [(["--lr", "1e-2"], "learning_rate"), (["--dtype", "float32"], "dtype"),
                                           (["--batch-size", "4"], "batch")])
def test_resume_is_refused_when_the_run_differs(runs, change, field):
    _, out = runs
    with pytest.raises(ValueError, match=field):
        run([*COMMON, "--grad-accum", "2", *change, "--resume", str(out / "ck_single" / "step_00000002")])


def test_memory_per_rank_matches_the_arithmetic(runs):
    results, _ = runs
    doc = results["fsdp_a1"][0]
    model = GPT(GPTConfig(**doc["model"]))
    psi = sum(p.numel() for p in model.parameters())
    assert doc["num_params"] == psi
    for rank in doc["ranks"]:  # FSDP2 = ZeRO-3: each rank's chunk of every tensor, exactly (8 bytes: float64)
        expected = fsdp_expected_memory(model, 2, rank["rank"], PRECISIONS["fp64"])
        m = rank["memory"]
        assert (m["parameters"], m["gradients"], m["optimizer"]) == (
            expected.parameters, expected.gradients, expected.optimizer)
    assert sum(r["memory"]["parameters"] for r in doc["ranks"]) == 8 * psi
    zero3 = zero_memory(psi, 2, 3, "fp64")
    assert abs(doc["ranks"][0]["memory"]["parameters"] - zero3.parameters) < 0.05 * zero3.parameters
    ddp = zero_memory(psi, 2, 0, "fp64")  # DDP: every rank holds everything
    for rank in results["ddp_a1"][0]["ranks"]:
        m = rank["memory"]
        assert (m["parameters"], m["gradients"], m["optimizer"]) == (ddp.parameters, ddp.gradients, ddp.optimizer)


def test_launch_runs_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        launch_runs(2, {}, tmp_path)
    with pytest.raises(ValueError, match="file names"):
        launch_runs(2, {"a/b": []}, tmp_path)
