"""The CUDA paths on a real GPU: `pytest -m gpu` (skipped without CUDA; `scripts/gpu_check.sh` runs
them first on the GPU machine). Optimizer steps on CUDA against the float64 references of
test_optimizers, eager and compiled by inductor, fused SGD for MSGD, the bf16 + channels_last +
compile training path, DDP over nccl, GPU JPEG decoding, the benchmarks' kernel time, and a
checkpoint written on the GPU and resumed."""

import copy
import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchvision.io import ImageReadMode, decode_image, encode_png, read_file

from sngm_bench import checkpoint
from sngm_bench.bench import bench_train
from sngm_bench.config import compose_config
from sngm_bench.data import build_data
from sngm_bench.data.imagenet import decode_batch, find_images
from sngm_bench.errors import DEADLINE_EXIT_CODE
from sngm_bench.models.cifar_resnet import CifarResNet
from sngm_bench.optim import build_optimizer
from sngm_bench.optim.benchmark import bench_optimizers
from sngm_bench.timing import kernel_seconds
from sngm_bench.train import train_step
from conftest import IMAGENET_SAMPLE, run_cli, run_command
from test_optimizers import (
    CASES, GROUPS, factory_optimizer, make_problem, options_per_tensor, run, scheduled_steps, small_model,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
TINY = ["experiment=smoke", "model.width=8", "dataset.subset=4000", "device=cuda"]
# Each run's time limit, below gpu_check.sh's 150 s per test: a run that hangs fails its test with the
# end of its output, instead of the whole test process being killed without it.
RUN_LIMIT_S = 120


def one_run(root):
    (run_dir,) = root.iterdir()
    return run_dir, json.loads((run_dir / "summary.json").read_text()), pd.read_csv(run_dir / "metrics.csv")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES)
def test_optimizer_step_on_cuda_matches_float64_reference(case, dtype):
    # On CUDA, foreach ops are fused multi-tensor kernels, and SNGM in float32 takes torch's fused
    # SGD kernel (float64 keeps foreach ops, so both forms run here): the same equations must hold.
    cls, defaults, group_options, reference = CASES[case]
    weights, grad_steps = make_problem(steps=7 if dtype == torch.float64 else 3, dtype=dtype)  # as on the CPU
    on_gpu = lambda tensors: [t.to(CUDA) for t in tensors]  # noqa: E731
    params, optimizer = run(lambda groups: cls(groups, **defaults), on_gpu(weights),
                            [on_gpu(grads) for grads in grad_steps], group_options)
    assert all(p.is_cuda and p.dtype == dtype for p in params)
    assert all(s.is_cuda for p in params for s in optimizer.state[p].values() if torch.is_tensor(s) and s.ndim)
    expected = reference([w.double() for w in weights], [[g.double() for g in gs] for gs in grad_steps],
                         options_per_tensor(defaults, group_options))
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for param, want in zip(params, expected):
        torch.testing.assert_close(param.detach().cpu().double(), want, **tol)


@pytest.mark.parametrize("case", ["sngm", "sngm-layer-decoupled", "lars-unadapted-group", "lamb"])
def test_step_compiled_by_inductor_on_cuda_follows_the_schedule_and_compiles_once(case):
    # compile_optimizer=true: Triton kernels, the step's changing values copied from pinned memory;
    # against the eager float64 step on the CPU (which test_optimizers checks against the references).
    cls, defaults, group_options, _ = CASES[case]
    weights, grad_steps = make_problem(steps=4, dtype=torch.float32)
    torch._dynamo.reset()
    results = []
    for device, dtype, backend in (("cpu", torch.float64, None), (CUDA, torch.float32, "inductor")):
        params = [nn.Parameter(w.to(device, dtype)) for w in weights]
        groups = [{"params": [params[i] for i in idx], **opts} for idx, opts in zip(GROUPS, group_options)]
        scheduled_steps(cls(groups, **defaults, compile_backend=backend), params,
                        [[g.to(device, dtype) for g in grads] for grads in grad_steps],
                        lambda: torch._dynamo.config.patch(error_on_recompile=True))
        results.append(params)
    for want, got in zip(*results):
        torch.testing.assert_close(got.detach().cpu().double(), want.detach(), rtol=1e-5, atol=1e-5)


def test_msgd_is_fused_sgd_on_cuda_and_steps_like_foreach_on_cpu():
    cpu_model = small_model()
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    on_cpu, _ = factory_optimizer("msgd", cpu_model)
    on_gpu, _ = factory_optimizer("msgd", gpu_model)
    assert on_gpu.defaults["fused"] and not on_gpu.defaults["foreach"]
    assert on_cpu.defaults["foreach"] and not on_cpu.defaults["fused"]
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p, q in zip(cpu_model.parameters(), gpu_model.parameters()):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.to(CUDA)
        on_cpu.step()
        on_gpu.step()
    for p, q in zip(cpu_model.parameters(), gpu_model.parameters()):
        torch.testing.assert_close(q.detach().cpu(), p.detach(), rtol=1e-5, atol=1e-6)


def test_bf16_channels_last_compile_run_learns_on_cuda(tmp_path, full_cifar_root):
    # The fast path end to end: bf16 autocast, channels_last data and model, torch.compile of the
    # training and evaluation forward passes, fp32 master weights in the checkpoint.
    result = run_cli([*TINY, "epochs=3", "batch_size=100", "precision=bf16", "channels_last=true", "compile=true"],
                     cwd=tmp_path, env_extra={"SNGM_DATA": str(full_cifar_root)}, timeout=RUN_LIMIT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir, summary, _ = one_run(tmp_path / "outputs" / "smoke")
    assert summary["status"] == "completed" and summary["device_name"] == torch.cuda.get_device_name(0)
    assert summary["final_test_acc"] > 0.2  # chance is 0.10; test_train's fp32 CPU run of this config clears 0.22
    model = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    assert all(t.dtype in (torch.float32, torch.int64) for t in model.values())


def test_ddp_over_nccl_with_one_process_equals_plain_training(tmp_path):
    # One GPU cannot hold two nccl ranks, so the product's DDP path (world_size > 1) is exercised
    # here with a one-process nccl group: DDP's all-reduce, its no_sync on accumulation
    # micro-batches and the product's train_step give the step of the plain model.
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = CifarResNet(8, width=8).to(CUDA)
        replica = copy.deepcopy(model)
        ddp = DistributedDataParallel(replica, device_ids=[torch.cuda.current_device()])
        cfg = compose_config(["optimizer=sngm"]).optimizer
        plain_opt, ddp_opt = build_optimizer(cfg, model, 0.05), build_optimizer(cfg, replica, 0.05)
        x, y = torch.randn(64, 3, 32, 32, device=CUDA), torch.randint(0, 10, (64,), device=CUDA)
        for _ in range(3):
            plain_loss, _ = train_step(model, plain_opt, x, y, 16, nullcontext())
            ddp_loss, _ = train_step(ddp, ddp_opt, x, y, 16, nullcontext(), ddp.no_sync)
        for a, b in zip(model.parameters(), replica.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ddp_loss, plain_loss, rtol=1e-4, atol=1e-5)
        total = torch.full((3,), 2.0, device=CUDA)
        dist.all_reduce(total)
        assert total.tolist() == [2.0, 2.0, 2.0]
    finally:
        dist.destroy_process_group()


def test_torchrun_one_process_trains_on_cuda(tmp_path, full_cifar_root):
    result = run_command([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                          "-m", "sngm_bench", *TINY, "epochs=1", "batch_size=200"], tmp_path,
                         {"SNGM_DATA": str(full_cifar_root)}, timeout=RUN_LIMIT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    _, summary, _ = one_run(tmp_path / "outputs" / "smoke")
    assert summary["status"] == "completed" and summary["world_size"] == 1 and summary["device"] == "cuda"


needs_sample = pytest.mark.skipif(IMAGENET_SAMPLE is None, reason="needs the ImageNet sample (../shared/data or .device)")


@needs_sample
def test_gpu_decode_gives_the_cpu_pipeline_images():
    def batches(device, gpu_decode):
        cfg = compose_config(["dataset=imagenet", f"dataset.root={IMAGENET_SAMPLE}", "dataset.workers=2",
                              f"dataset.gpu_decode={gpu_decode}"])
        return list(build_data(cfg.dataset, torch.device(device)).test.eval_batches(50))

    on_cpu, on_gpu = batches("cpu", False), batches("cuda", True)
    assert all(x.is_cuda and y.is_cuda and x.shape == (50, 3, 224, 224) for x, y in on_gpu)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255  # back to pixel levels
    for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(on_cpu, on_gpu):
        assert torch.equal(y_gpu.cpu(), y_cpu)
        # nvJPEG and libjpeg round differently, and resizing differs by a level here and there.
        assert ((x_gpu.cpu() - x_cpu) * std).abs().mean() < 3.0


@needs_sample
def test_nvjpeg_hands_a_file_it_cannot_decode_to_the_cpu():
    # ImageNet's train set holds a PNG under a .JPEG name: nvJPEG's batch call fails on it.
    jpeg = read_file(str(find_images(IMAGENET_SAMPLE, "train")[0][0]))
    png = encode_png(decode_image(jpeg, mode=ImageReadMode.RGB))
    decoded = decode_batch([jpeg, png, jpeg], CUDA, [Path("a.JPEG"), Path("b.JPEG"), Path("c.JPEG")])
    assert all(image.is_cuda and image.shape[0] == 3 for image in decoded)
    assert torch.equal(decoded[1].cpu(), decode_image(png)) and torch.equal(decoded[0], decoded[2])


@needs_sample
def test_resnet50_trains_with_gpu_decode(tmp_path):
    result = run_cli(["dataset=imagenet", "model=resnet50", f"dataset.root={IMAGENET_SAMPLE}", "dataset.image_size=64",
                      "dataset.workers=2", "dataset.gpu_decode=true", "batch_size=100", "epochs=2",
                      "eval_batch_size=50", "device=cuda", "precision=bf16", "channels_last=true"], cwd=tmp_path,
                     timeout=RUN_LIMIT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    _, summary, metrics = one_run(tmp_path / "outputs" / "default")
    assert summary["status"] == "completed" and summary["steps_per_epoch"] == 2 and len(metrics) == 2
    assert metrics["train_loss"].notna().all() and metrics["test_loss"].notna().all()


def test_kernel_time_counts_each_kernel_once_and_the_benchmarks_report_it(full_cifar_root, monkeypatch):
    # Fifty large matmuls in a row on one stream: their kernels fill most of the calls' wall time and
    # cannot exceed it, where counting an op and its kernel both would double them. Both are timed in
    # the same pass, so the GPU work of the tests beside it (pytest-xdist) stretches both alike.
    a = torch.randn(8192, 8192, device=CUDA)

    def matmul():
        return a @ a

    kernel_seconds(CUDA, 1, matmul)  # cuBLAS's and the profiler's start-up, outside the measurement
    start = time.perf_counter()
    kernels = 50 * kernel_seconds(CUDA, 50, matmul)
    wall = time.perf_counter() - start
    assert 0.5 * wall < kernels <= wall
    rows = bench_optimizers(["resnet20"], steps=5, warmup=2, device="cuda")
    assert all(row["kernel_ms"] > 0 for row in rows)
    assert [row["kernel_vs_sgd_fused"] for row in rows if row["optimizer"] == "sgd_fused"] == [1.0]
    monkeypatch.setenv("SNGM_DATA", str(full_cifar_root))
    result = bench_train(compose_config([*TINY, "batch_size=256"]), steps=3, warmup=2, compare_reference=True)
    assert 0 < result["kernel_ms"] and 0 < result["reference_kernel_ms"]
    assert 0 < result["data_kernel_ms"] < result["kernel_ms"]  # the data work is a part of the step's


def test_checkpoint_loaded_onto_the_gpu_restores_its_rng_states(tmp_path):
    # checkpoint.load maps every tensor to the run's device, the RNG states too, and torch sets a
    # generator's state only from a CPU byte tensor.
    torch.manual_seed(3)
    checkpoint.save(tmp_path, {"rng": checkpoint.capture_rng()})
    expected = torch.rand(4), torch.rand(4, device=CUDA)
    checkpoint.restore_rng(checkpoint.load(tmp_path, CUDA)["rng"])
    assert torch.equal(torch.rand(4), expected[0]) and torch.equal(torch.rand(4, device=CUDA), expected[1])


# A run stopped mid-epoch and continued from its checkpoint equals an uninterrupted run, bit for
# bit, when CUDA is asked for deterministic kernels (cuDNN picks nondeterministic convolution
# algorithms otherwise, and two uninterrupted runs differ too).
DETERMINISTIC = """import runpy, sys, torch
torch.use_deterministic_algorithms(True, warn_only=True)
sys.argv[0] = "sngm-bench"
runpy.run_module("sngm_bench", run_name="__main__")
"""
RESUMABLE = ["experiment=smoke", "model.width=4", "dataset.subset=2000", "epochs=2", "batch_size=10", "log_every=5",
             "device=cuda"]


def test_checkpoint_written_on_gpu_resumes_to_the_uninterrupted_run(tmp_path, full_cifar_root, request):
    (tmp_path / "deterministic.py").write_text(DETERMINISTIC)
    env = {**os.environ, "SNGM_DATA": str(full_cifar_root), "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    processes = []
    request.addfinalizer(lambda: [process.kill() for process in processes if process.poll() is None])

    def start(folder, *extra):  # output to a file: a pipe nobody reads until the end can fill and block the run
        folder.mkdir(exist_ok=True)
        with open(folder / "output.txt", "a") as output:
            processes.append(subprocess.Popen([sys.executable, str(tmp_path / "deterministic.py"), *RESUMABLE, *extra],
                                              cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT))
        return processes[-1]

    def output_of(folder):
        return (folder / "output.txt").read_text()[-3000:]

    # One deadline for the whole test, under gpu_check's 150 s per test: a slow run then fails the test
    # with its output, where pytest-timeout would end the test process with only its threads' stacks.
    deadline = time.time() + RUN_LIMIT_S

    def finish(process, folder):  # the run's output; a run still going at the deadline fails the test
        try:
            process.wait(timeout=max(deadline - time.time(), 0))
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"the run in {folder.name} ran past the test's {RUN_LIMIT_S} s; its output ended:\n"
                        f"{output_of(folder)}")
        return output_of(folder)

    # The stopped run's deadline has passed at its first step, so it stops there, at (1, 1), mid-epoch
    # whatever the GPU's speed (a signal sent when epoch 1 is written can land before epoch 2's first
    # step, which stops the run at that epoch's checkpoint instead; so it did on an H200).
    straight = start(tmp_path / "straight")
    stopped = start(tmp_path / "stopped", "max_minutes=1e-6")  # the GPU holds both
    output = finish(stopped, tmp_path / "stopped")
    assert stopped.returncode == DEADLINE_EXIT_CODE, output
    output = finish(straight, tmp_path / "straight")
    assert straight.returncode == 0, output
    runs = tmp_path / "stopped" / "outputs" / "smoke"
    (run_dir,) = runs.iterdir()
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert (state["epoch"], state["step"]) == (1, 1), "the deadline should stop the run at its first step"
    assert all(t.is_cuda for t in torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"].values())

    resumed = start(tmp_path / "stopped")
    output = finish(resumed, tmp_path / "stopped")
    assert resumed.returncode == 0, output
    (straight_dir,) = (tmp_path / "straight" / "outputs" / "smoke").iterdir()
    compared = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(pd.read_csv(straight_dir / "metrics.csv")[compared],
                                  pd.read_csv(run_dir / "metrics.csv")[compared], check_exact=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [(entry["epoch"], entry["step"]) for entry in summary["resumed_at"]] == [(1, 1)]
    final = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    reference = torch.load(straight_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    for key, value in reference.items():
        assert torch.equal(value, final[key]), key
