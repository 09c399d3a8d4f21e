"""What a user reads on the console: the end-of-run line, a sweep's progress and closing table,
and when the loss is read (real CLI, tiny runs on real CIFAR-10)."""

import contextlib
import fcntl
import json
import logging
import os
import re
import struct
import subprocess
import sys
import termios
import time

from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import run_cli
from sngm_bench import callbacks
from sngm_bench.cli import check_overrides
from sngm_bench.progress import EARLY_READOUT, is_readout

TINIEST = ["experiment=smoke", "model.width=4", "dataset.subset=400", "epochs=1"]


def test_a_sweep_shows_its_progress_each_runs_result_and_what_to_do_next(tmp_path, cifar_root):
    args = ["-m", *TINIEST, "optimizer=msgd", "batch_size=100,0"]  # batch 0 fails at once
    result = run_cli(args, cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 2  # a failed run makes the sweep exit non-zero
    out = result.stdout
    assert "sweep: run 1 of 2 (0 completed, 0 failed, 0 diverged so far)" in out
    assert re.search(r"sweep: run 2 of 2 \(1 completed, 0 failed, 0 diverged so far; ETA \d+ s\)", out)

    folder = "multirun/smoke/batch_size=100,dataset.subset=400,epochs=1,model.width=4,optimizer=msgd"
    summary = json.loads((tmp_path / folder / "summary.json").read_text())
    line = (f"completed, final test accuracy {100 * summary['final_test_acc']:.2f} % "
            f"(best {100 * summary['best_test_acc']:.2f} %), {summary['wall_seconds']:.0f} s, "
            f"{summary['images_per_second']:.0f} images/s; run folder {folder}")
    assert line in out
    assert "failed: batch_size=0 must be a positive integer; run folder multirun/smoke/batch_size=0," in out

    table = out[out.index("sweep of 2 runs in multirun/smoke"):].splitlines()
    assert table[1].split() == ["status", "test", "acc", "run"]
    # In the sweep's order, not the folders' names' (where batch_size=0 comes first).
    assert table[2].split() == ["completed", f"{100 * summary['final_test_acc']:.2f}", "%", folder.split("/")[-1]]
    assert table[3].split() == ["failed", "–", folder.replace("batch_size=100", "batch_size=0").split("/")[-1]]
    assert table[4] == "next: sngm-bench-report multirun/smoke"
    # The end-of-run line is in the run's log too.
    assert line.split("; run folder")[0] in (tmp_path / folder / "train.log").read_text()

    # The same command again: the finished run is not trained, says so, and counts as completed.
    again = run_cli(args, cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)}).stdout
    assert f"{line} (finished earlier: nothing trained)" in again
    assert "sweep: run 2 of 2 (1 completed, 0 failed, 0 diverged so far" in again  # the failed run was retried
    assert again[again.index("sweep of 2 runs in multirun/smoke"):].splitlines()[2:4] == table[2:4]


def test_the_loss_is_read_early_in_each_epoch_whatever_log_every_is():
    steps_per_epoch, log_every = 40, 1000
    readouts = [step for step in range(1, steps_per_epoch + 1) if is_readout(step, log_every, steps_per_epoch)]
    assert readouts == [EARLY_READOUT, steps_per_epoch]  # one host sync more per epoch, no more
    assert [s for s in range(1, 41) if is_readout(s, 10, 40)] == [EARLY_READOUT, 10, 20, 30, 40]


def open_terminal() -> tuple[int, int]:
    """A pseudo-terminal's two ends (master, slave), 150 columns wide: tqdm draws no bar 0 wide."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    return master, slave


def run_in_terminal(args, cwd, env_extra, timeout=600) -> str:
    """`python -m sngm_bench ARGS` on a pseudo-terminal 150 columns wide (so tqdm draws its bars);
    returns everything it printed."""
    master, slave = open_terminal()
    process = subprocess.Popen([sys.executable, "-m", "sngm_bench", *args], cwd=cwd, stdout=slave, stderr=slave,
                               env={**os.environ, **env_extra})
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=timeout) == 0
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_log_lines_are_printed_above_the_bar_not_onto_it(tmp_path, cifar_root):
    out = run_in_terminal([*TINIEST, "dataset.subset=1000", "batch_size=100", "log_every=1000"], tmp_path,
                          {"SNGM_DATA": str(cifar_root)})
    assert "step/s" in out or "s/step" in out  # the bar was drawn
    assert "evaluating:" in out  # and the evaluation's bar
    assert f"| {EARLY_READOUT}/10 [" in out and "loss=" in out  # a loss before the epoch's end
    log_lines = [m.start() for m in re.finditer(r"\[\d{4}-\d\d-\d\d [\d:,]+\]\[sngm_bench", out)]
    assert len(log_lines) >= 4
    assert all(out[i - 1] in "\r\n" for i in log_lines), [out[i - 40:i + 20] for i in log_lines]


def test_a_sweep_run_refused_by_its_folder_shows_as_refused_not_as_the_run_it_holds(tmp_path, cifar_root):
    env = {"SNGM_DATA": str(cifar_root)}
    grid = ["-m", "name=t", "model.width=4", "dataset.subset=400", "epochs=1", "optimizer=msgd", "batch_size=100"]
    folder = "batch_size=100,dataset.subset=400,epochs=1,model.width=4,optimizer=msgd"
    first = run_cli([*grid, "experiment=smoke"], cwd=tmp_path, env_extra=env)
    assert first.returncode == 0, first.stderr[-3000:]

    def refused_sweep(overrides, reason):
        result = run_cli([*grid, *overrides], cwd=tmp_path, env_extra=env)
        assert result.returncode == 2 and reason in result.stdout, result.stdout[-3000:]
        table = result.stdout[result.stdout.index("sweep of 1 runs in multirun/t"):].splitlines()
        assert table[2].split() == ["refused", "–", folder]
        assert "completed, final test accuracy" not in result.stdout  # no end-of-run line of the other run

    with open(tmp_path / "multirun" / "t" / folder / ".lock", "w") as lock:  # as a live run of it would
        fcntl.flock(lock, fcntl.LOCK_EX)
        refused_sweep(["experiment=smoke"], "another process is training in")
    # experiment= stays out of folder names: another experiment's run lands in the same folder, whose config differs.
    refused_sweep(["experiment=paper_cifar10"], "holds a run trained with model.depth=8 (now 20)")


def test_a_refused_run_counts_as_failed_in_the_sweeps_progress(tmp_path, caplog):
    # Its folder holds another run, completed earlier: the sweep lists it as failed, as its table and exit code do.
    sweep_dir, refused, starting = tmp_path, tmp_path / "seed=0", tmp_path / "seed=1"
    refused.mkdir()
    (refused / "summary.json").write_text(json.dumps({"status": "completed", "final_test_acc": 0.5}))
    for list_file in (callbacks.STARTED_FILE, callbacks.FAILURES_FILE):
        callbacks.add_to_list(sweep_dir, list_file, refused)
    report = callbacks.RunReport()
    report.sweep_start, report.sweep_runs = time.time(), 2
    config = OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(sweep_dir)},
                                         "runtime": {"output_dir": str(starting)}, "job": {"num": 1}}})
    with caplog.at_level(logging.INFO, logger="sngm_bench"):
        report.on_job_start(config)
    assert caplog.messages == ["sweep: run 2 of 2 (0 completed, 1 failed, 0 diverged so far)"]


def test_checking_a_sweeps_runs_shows_a_bar_on_a_terminal_only():
    # Every run of a sweep is composed before the first starts: a few a second, so a grid of a hundred
    # takes a while on which the terminal would otherwise show nothing.
    def on_terminal(overrides, multirun) -> str:
        master, slave = open_terminal()
        with open(slave, "w") as terminal:
            with contextlib.redirect_stderr(terminal):
                check_overrides(overrides, multirun)
            terminal.write("END")  # read up to this mark while the terminal is open: then nothing is lost
            terminal.flush()
            written = b""
            while not written.endswith(b"END"):
                written += os.read(master, 65536)
        os.close(master)
        return written.decode(errors="replace").removesuffix("END")

    shown = on_terminal(["experiment=smoke", "seed=0,1,2"], multirun=True)
    assert "checking the sweep's runs:   0%" in shown and "| 0/3 [" in shown, shown  # drawn as it starts
    assert on_terminal(["experiment=smoke"], multirun=False) == ""
