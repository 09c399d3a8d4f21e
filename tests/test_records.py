"""Records that stay true: a rerun compares configs, checkpoints survive a bad write, a deadline
stops a sweep that a rerun then finishes, out-of-memory and a full disk end in one line, and a
run folder that cannot be created, or a run that never started, leaves nothing behind. Real
CLI, real training on tiny runs; out-of-memory and ENOSPC come from a real boundary."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TWO_PROCESSES, change_one_image, cifar_copy, run_cli, run_command
from sngm_bench.errors import UserError
from sngm_bench.records import read_metrics
from sngm_bench.report import collect_runs

TINY = ["experiment=smoke", "model.width=4", "dataset.subset=400", "epochs=1", "batch_size=100"]  # 4 steps
FIRST_STEP = ["max_minutes=1e-6"]  # the deadline has passed when the first step ends: stop there


def one_line(result, code=2) -> str:
    """The last line of stderr, which says why the command ended: an error (exit code 2), or a stop
    (124 at the max_minutes deadline, 128 + N on signal N), which is no error."""
    assert result.returncode == code, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    prefix = "sngm-bench: error: " if code == 2 else "sngm-bench: stopped "
    assert lines and lines[-1].startswith(prefix), result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    return lines[-1]


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def resumed_where(summary: dict) -> list[tuple[int, int]]:
    """(epoch, step) of each continuation of a run."""
    return [(entry["epoch"], entry["step"]) for entry in summary["resumed_at"]]


@pytest.fixture
def cli(tmp_path, cifar_root):
    def run(*args):
        options = [a for a in args if a == "-m"]  # Hydra takes options before the overrides
        overrides = [a for a in args if a != "-m"]
        return run_cli([*options, *TINY, *overrides], cwd=tmp_path, env_extra={"SNGM_DATA": str(cifar_root)})
    return run


def test_a_rerun_with_another_training_config_is_refused_naming_every_difference(tmp_path, cli):
    run_dir = tmp_path / "run"
    one_line(cli("hydra.run.dir=run", *FIRST_STEP), code=124)
    hydra_files = {p.name: p.read_text() for p in (run_dir / ".hydra").glob("*.yaml")}
    interrupted = summary(run_dir)

    error = one_line(cli("hydra.run.dir=run", "optimizer.lr=0.5", "seed=3"))
    assert f"{run_dir} holds a run trained with optimizer.lr=0.1 (now 0.5), seed=0 (now 3); " \
           "add overwrite=true to train it again with the new config, or choose another folder" in error
    assert summary(run_dir) == interrupted  # the record still says how the run was trained
    assert {p.name: p.read_text() for p in (run_dir / ".hydra").glob("*.yaml")} == hydra_files

    watched = cli("hydra.run.dir=run", "log_every=2", "eval_batch_size=500")  # not what is trained: continues
    assert watched.returncode == 0, watched.stderr[-3000:]
    finished = summary(run_dir)
    assert finished["status"] == "completed" and resumed_where(finished) == [(1, 1)]
    # The summary keeps the commands of the start; the continuation names its own.
    assert finished["command"] == interrupted["command"] == \
        shlex.join(["sngm-bench", "hydra.run.dir=run", *TINY, *FIRST_STEP])
    assert finished["resumed_at"][0]["command"] == \
        shlex.join(["sngm-bench", "hydra.run.dir=run", *TINY, "log_every=2", "eval_batch_size=500"])
    assert set(finished["resumed_at"][0]) == {"epoch", "step", "command", "launch_command"}  # same hardware, code

    longer = one_line(cli("hydra.run.dir=run", "epochs=2"))  # the schedule depends on the total
    assert "holds a run trained with epochs=1 (now 2); add overwrite=true" in longer
    assert summary(run_dir) == finished

    retrained = cli("hydra.run.dir=run", "epochs=2", "overwrite=true")
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    assert summary(run_dir)["epochs"] == 2 and summary(run_dir)["resumed_at"] == []


def test_a_run_is_not_continued_on_data_with_one_image_changed(tmp_path, cli, cifar_root):
    from sngm_bench.data import cifar10

    batch = cifar_copy(cifar_root, tmp_path / "data")
    args = ["hydra.run.dir=run", f"dataset.root={tmp_path / 'data'}", "dataset.verify_checksums=false"]
    one_line(cli(*args, *FIRST_STEP), code=124)
    run_dir = tmp_path / "run"
    interrupted = summary(run_dir)
    assert sorted(interrupted["data_fingerprint"]) == [*cifar10.TRAIN_FILES, *cifar10.TEST_FILES]

    change_one_image(batch)
    error = one_line(cli(*args))
    assert f"{run_dir} holds a run trained on other data: data_fingerprint.data_batch_1=" \
           f"'{interrupted['data_fingerprint']['data_batch_1']}' (now '" in error
    assert error.endswith("'); set dataset.root to the data it was trained on, or add overwrite=true to train it again")
    assert summary(run_dir) == interrupted

    # A run recorded before data fingerprints were continues (on whatever data it finds), and records it.
    del interrupted["data_fingerprint"]
    (run_dir / "summary.json").write_text(json.dumps(interrupted))
    continued = cli(*args)
    assert continued.returncode == 0, continued.stderr[-3000:]
    finished = summary(run_dir)
    assert finished["status"] == "completed" and f"(now '{finished['data_fingerprint']['data_batch_1']}')" in error


def test_a_run_continued_on_another_number_of_processes_says_so_and_keeps_its_running_sums(tmp_path, cifar_root):
    # Stopped after its first step in one process, continued by two (torchrun, gloo). Without
    # BatchNorm the two-process run trains as one process does, up to rounding.
    env = {"SNGM_DATA": str(cifar_root), "OMP_NUM_THREADS": "1"}
    args = [*TINY, "model.batch_norm=false"]
    assert run_cli([*args, "hydra.run.dir=straight"], cwd=tmp_path, env_extra=env).returncode == 0
    one_line(run_cli([*args, "hydra.run.dir=run", *FIRST_STEP], cwd=tmp_path, env_extra=env), code=124)
    started = summary(tmp_path / "run")
    torchrun = [*TWO_PROCESSES, "-m", "sngm_bench", *args, "hydra.run.dir=run"]
    continued = run_command(torchrun, tmp_path, env)
    assert continued.returncode == 0, continued.stderr[-3000:]
    finished = summary(tmp_path / "run")
    assert (finished["status"], finished["world_size"], finished["command"]) == ("completed", 1, started["command"])
    (entry,) = finished["resumed_at"]
    assert (entry["epoch"], entry["step"], entry["world_size"]) == (1, 1, 2) and entry["command"] != started["command"]
    # Step 1's loss sum, carried from one process to two, is counted once in the epoch's mean.
    straight = summary(tmp_path / "straight")
    assert finished["final_train_loss"] == pytest.approx(straight["final_train_loss"], rel=1e-4)


def test_an_unreadable_checkpoint_falls_back_to_the_previous_one_and_none_readable_is_one_line(tmp_path, cli):
    run_dir = tmp_path / "run"
    one_line(cli("hydra.run.dir=run", *FIRST_STEP), code=124)  # checkpoint at step 1
    one_line(cli("hydra.run.dir=run", *FIRST_STEP), code=124)  # step 2; step 1's is the previous one
    newest = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    previous = torch.load(run_dir / "checkpoint.prev.pt", weights_only=False)
    assert (newest["epoch"], newest["step"], previous["epoch"], previous["step"]) == (1, 2, 1, 1)

    broken = tmp_path / "broken"
    subprocess.run(["cp", "-a", str(run_dir), str(broken)], check=True)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        with open(broken / name, "r+b") as f:
            f.truncate(1000)
    error = one_line(cli("hydra.run.dir=broken"))
    assert f"no readable checkpoint in {broken} (checkpoint.pt: " in error and "add overwrite=true" in error

    with open(run_dir / "checkpoint.pt", "r+b") as f:  # a write cut short
        f.truncate(f.seek(0, 2) // 2)
    resumed = cli("hydra.run.dir=run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "unreadable checkpoint.pt: " in resumed.stdout + resumed.stderr
    assert "; continuing from checkpoint.prev.pt (epoch 1, step 1)" in resumed.stdout + resumed.stderr
    assert summary(run_dir)["status"] == "completed" and resumed_where(summary(run_dir)) == [(1, 1)]


def test_a_checkpoint_that_does_not_fit_the_runs_model_is_one_line(tmp_path, cli):
    # A checkpoint copied in from another run (or left by a version whose model differs): it was a traceback.
    one_line(cli("hydra.run.dir=run", *FIRST_STEP), code=124)
    one_line(cli("hydra.run.dir=wider", "model.width=8", *FIRST_STEP), code=124)
    (tmp_path / "wider" / "checkpoint.pt").replace(tmp_path / "run" / "checkpoint.pt")
    interrupted = summary(tmp_path / "run")
    error = one_line(cli("hydra.run.dir=run"))
    assert error.startswith(f"sngm-bench: error: the checkpoint in {tmp_path / 'run'} does not fit this run's model "
                            "(size mismatch for fc.weight: ")
    assert error.endswith("add overwrite=true to train the run again from the start")
    assert summary(tmp_path / "run") == interrupted


def test_a_run_whose_summary_was_deleted_is_refused_saying_so(tmp_path, cli):
    one_line(cli("hydra.run.dir=run", *FIRST_STEP), code=124)
    (tmp_path / "run" / "summary.json").unlink()  # by hand: it said "(an earlier sngm-bench)"
    assert one_line(cli("hydra.run.dir=run")) == (
        f"sngm-bench: error: {tmp_path / 'run'} holds a run whose summary.json, which records its config, is missing "
        "or unreadable; add overwrite=true to train it again, or choose another folder")


def test_a_summary_that_is_not_a_json_object_is_unreadable_to_the_rerun_and_the_report(tmp_path, cli, caplog):
    one_line(cli("hydra.run.dir=run", *FIRST_STEP), code=124)
    (tmp_path / "run" / "summary.json").write_text("[]\n")  # JSON, but no summary: another program's file
    assert one_line(cli("hydra.run.dir=run")) == (
        f"sngm-bench: error: {tmp_path / 'run'} holds a run whose summary.json, which records its config, is missing "
        "or unreadable; add overwrite=true to train it again, or choose another folder")
    with pytest.raises(UserError, match="no readable sngm-bench run folders"):
        collect_runs([tmp_path])
    assert f"skipping {tmp_path / 'run'}: summary.json holds no JSON object" in caplog.text


def test_a_summary_whose_config_is_no_json_object_is_refused_by_the_rerun_and_skipped_by_the_report(
        tmp_path, cli, caplog):
    one_line(cli("hydra.run.dir=run", *FIRST_STEP), code=124)
    path = tmp_path / "run" / "summary.json"
    recorded = summary(tmp_path / "run")
    path.write_text(json.dumps({**recorded, "config": None}))  # by hand: it was a traceback
    assert one_line(cli("hydra.run.dir=run")) == (
        f"sngm-bench: error: {tmp_path / 'run'} holds a run whose summary.json records a config that is no JSON "
        "object; add overwrite=true to train it again, or choose another folder")
    (tmp_path / "run" / ".hydra" / "config.yaml").unlink()  # the report reads the summary's config instead
    for config in (None, [1, 2], {**recorded["config"], "optimizer": {}}):
        caplog.clear()
        path.write_text(json.dumps({**recorded, "config": config}))
        with pytest.raises(UserError, match="no readable sngm-bench run folders"):
            collect_runs([tmp_path])
        reason = "has no optimizer.name" if isinstance(config, dict) else "records a config that is no JSON object"
        assert f"skipping {tmp_path / 'run'}: summary.json {reason}" in caplog.text  # was: '.hydra/config.yaml has no


# The command line, with SIGTERM sent to itself when a run's training loop has returned, i.e.
# after its last step and evaluation: a signal the loop never saw between steps.
SIGNAL_AFTER_LAST_STEP = """import os, runpy, signal, sys
from sngm_bench.train import Trainer
fit = Trainer.fit
def fit_then_signal(self, *args, **kwargs):
    summary = fit(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return summary
Trainer.fit = fit_then_signal
sys.argv[0] = "sngm-bench"
runpy.run_module("sngm_bench", run_name="__main__")
"""


def test_a_signal_after_a_runs_last_step_completes_it_and_stops_the_sweep(tmp_path, cifar_root):
    result = run_command([sys.executable, "-c", SIGNAL_AFTER_LAST_STEP, "-m", *TINY, "seed=0,1"], tmp_path,
                         {"SNGM_DATA": str(cifar_root)})
    assert "stopped by SIGTERM" in one_line(result, code=128 + signal.SIGTERM)
    runs = [json.loads(p.read_text()) for p in (tmp_path / "multirun" / "smoke").glob("*/summary.json")]
    assert [(s["seed"], s["status"], s["epochs"]) for s in runs] == [(0, "completed", 1)]  # seed 1 never started


def test_a_deadline_mid_sweep_stops_it_and_the_rerun_trains_exactly_the_missing_work(tmp_path, cli):
    sweep_dir = tmp_path / "multirun" / "smoke"
    assert cli("-m", "seed=0").returncode == 0

    def runs():
        found = {}
        for path in sweep_dir.glob("*/summary.json"):
            seed = yaml.safe_load((path.parent / ".hydra" / "config.yaml").read_text())["seed"]
            found[seed] = (path.read_text(), (path.parent / ".hydra" / "overrides.yaml").read_text())
        return found

    before = runs()
    error = one_line(cli("-m", "seed=0,1,2", *FIRST_STEP), code=124)
    assert "stopped at the max_minutes deadline" in error
    stopped = runs()
    assert sorted(stopped) == [0, 1]  # the sweep stopped at the deadline: seed 2 never started
    assert stopped[0] == before[0]  # finished: left alone, its .hydra record included
    state = json.loads(stopped[1][0])
    assert (state["status"], state["interrupted_by"], state["interrupted_epoch"], state["interrupted_step"]) == \
        ("interrupted", "max_minutes", 1, 1)

    rerun = cli("-m", "seed=0,1,2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = runs()
    assert after[0] == before[0]
    finished = {seed: json.loads(text) for seed, (text, _) in after.items()}
    assert all(s["status"] == "completed" for s in finished.values())
    assert resumed_where(finished[1]) == [(1, 1)] and finished[2]["resumed_at"] == []

    again = cli("-m", "seed=0,1,2")  # the same command once more: nothing is trained
    assert again.returncode == 0 and runs() == after
    assert again.stdout.count("already holds a completed run") == 3


OUT_OF_MEMORY = """
import os, sys, torch
import sngm_bench.train as train

real_step = train.train_step
FITS = int(os.environ.get("IMAGES_THAT_FIT", "50"))  # a device that holds micro-batches of up to 50 images

def train_step(forward, optimizer, x, y, micro_batch_size, *args, **kwargs):
    if micro_batch_size > FITS:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return real_step(forward, optimizer, x, y, micro_batch_size, *args, **kwargs)

train.train_step = train_step
from sngm_bench.cli import main
main()
"""


def test_out_of_memory_is_one_line_naming_the_micro_batch_and_a_sweep_goes_on(tmp_path, cifar_root):
    def run(*args, fits=50):
        options, overrides = [a for a in args if a == "-m"], [a for a in args if a != "-m"]
        return subprocess.run([sys.executable, "-c", OUT_OF_MEMORY, *options, *TINY, *overrides], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "SNGM_DATA": str(cifar_root), "IMAGES_THAT_FIT": str(fits)})

    error = one_line(run("hydra.run.dir=single"))
    assert "out of GPU memory in a forward/backward pass of a micro-batch of 100 images" in error
    assert "set max_micro_batch_size=50 or a smaller micro_batch_size" in error
    assert summary(tmp_path / "single")["status"] == "failed"
    # A micro_batch_size that is set overrides max_micro_batch_size: the line names the setting that applies.
    error = one_line(run("hydra.run.dir=set", "micro_batch_size=100"))
    assert error.endswith("; set micro_batch_size=50 (a divisor of each process's 100 images)")
    error = one_line(run("hydra.run.dir=one", "micro_batch_size=1", fits=0))
    assert error.endswith("; not even one image fits: choose a smaller model, or precision=bf16")

    sweep = run("-m", "max_micro_batch_size=100,50")
    assert sweep.returncode == 2 and "1 run(s) of the sweep failed" in sweep.stderr.strip().splitlines()[-1]
    statuses = {}
    for path in (tmp_path / "multirun" / "smoke").glob("*/summary.json"):
        config = yaml.safe_load((path.parent / ".hydra" / "config.yaml").read_text())
        statuses[config["max_micro_batch_size"]] = json.loads(path.read_text())
    assert statuses[100]["status"] == "failed" and "micro-batch of 100 images" in statuses[100]["error"]
    assert statuses[50]["status"] == "completed"


# The command line, with every write to the run file {name} failing with ENOSPC from the start's
# cleanup of half-written files on: its temporary file is a link to /dev/full.
FULL_DISK_FOR = """
import sngm_bench.train as train

real_remove = train.remove_partial_writes

def remove_partial_writes(run_dir):
    real_remove(run_dir)
    (run_dir / ".{name}.tmp").symlink_to("/dev/full")

train.remove_partial_writes = remove_partial_writes
from sngm_bench.cli import main
main()
"""


@pytest.mark.parametrize("name", ["summary.json", "checkpoint.pt"])
def test_a_full_disk_is_one_line_and_leaves_no_half_written_file(tmp_path, cifar_root, name):
    run_dir = tmp_path / "run"
    error = one_line(run_command([sys.executable, "-c", FULL_DISK_FOR.format(name=name), *TINY,
                                        "hydra.run.dir=run"], tmp_path, {"SNGM_DATA": str(cifar_root)}))
    assert f"cannot write {run_dir / name}: No space left on device" in error
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert not (run_dir / "checkpoint.pt").exists()
    if name == "checkpoint.pt":  # the other records were written whole
        assert summary(run_dir)["status"] == "failed" and (run_dir / "metrics.csv").read_text().count("\n") == 2


def test_a_run_folder_that_cannot_be_created_is_one_line(tmp_path, cli):
    (tmp_path / "a_file").write_text("")
    for args, what in [(["hydra.run.dir=a_file/run"], "run"), (["-m", "hydra.sweep.dir=a_file/sweep"], "sweep"),
                       (["hydra.run.dir=/proc/sngm/run"], "run")]:
        error = one_line(cli(*args))
        assert f"cannot create the {what} folder " in error and f"choose another (hydra.{what}.dir=...)" in error


def test_an_existing_run_folder_nothing_can_be_written_in_is_one_line(cli, read_only_folder):
    for args, what in [([f"hydra.run.dir={read_only_folder}"], "run"),
                       (["-m", f"hydra.sweep.dir={read_only_folder}"], "sweep")]:
        error = one_line(cli(*args))
        assert f"cannot write in the {what} folder " in error and f"choose another (hydra.{what}.dir=...)" in error


def test_an_error_before_training_leaves_no_folder_but_never_removes_an_earlier_one(tmp_path, cli):
    for bad in (["optimizer.lr=-1"], ["dataset.root=nowhere"], ["batch_size=5000"]):
        one_line(cli(*bad))
        assert not (tmp_path / "outputs").exists(), bad
    (tmp_path / "mine").mkdir()
    one_line(cli("hydra.run.dir=mine", "optimizer.lr=-1"))
    assert (tmp_path / "mine").is_dir()  # it was there before the command


def test_a_report_shows_a_run_whose_process_died_as_interrupted(tmp_path, cifar_root):
    process = subprocess.Popen([sys.executable, "-m", "sngm_bench", *TINY, "epochs=50", "hydra.run.dir=run"],
                               cwd=tmp_path, env={**os.environ, "SNGM_DATA": str(cifar_root)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (tmp_path / "run" / "summary.json").exists():
            assert process.poll() is None
            time.sleep(0.05)  # polling for the event
        assert collect_runs([tmp_path])["status"].tolist() == ["running"]  # its process holds the lock
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert summary(tmp_path / "run")["status"] == "running"  # what it wrote before it was killed
    assert collect_runs([tmp_path])["status"].tolist() == ["interrupted"]


def test_a_report_shows_a_run_that_has_not_written_its_summary_yet(tmp_path, cli):
    from sngm_bench.run_folder import FolderLock

    assert cli("hydra.run.dir=run").returncode == 0
    (tmp_path / "run" / "summary.json").unlink()  # as before the run's first write: it is loading its data
    with FolderLock(tmp_path / "run"):
        assert collect_runs([tmp_path])["status"].tolist() == ["running"]
    assert collect_runs([tmp_path])["status"].tolist() == ["interrupted"]  # it died while setting up


def test_a_start_that_does_not_train_leaves_the_record_of_the_one_that_did(tmp_path, cli):
    from sngm_bench.run_folder import FolderLock

    run_dir = tmp_path / "run"
    assert cli("hydra.run.dir=run").returncode == 0
    hydra_files = {p.name: p.read_text() for p in (run_dir / ".hydra").glob("*.yaml")}
    with FolderLock(run_dir):  # as a live run holds it
        assert "another process is training in" in one_line(cli("hydra.run.dir=run", "batch_size=50"))
    assert {p.name: p.read_text() for p in (run_dir / ".hydra").glob("*.yaml")} == hydra_files
    assert "exceeds the 400 training images" in one_line(cli("hydra.run.dir=run", "batch_size=800",
                                                                   "overwrite=true"))
    assert {p.name: p.read_text() for p in (run_dir / ".hydra").glob("*.yaml")} == hydra_files
    assert "optimizer.lr=-1.0 must be positive" in one_line(cli("hydra.run.dir=run", "optimizer.lr=-1"))
    assert {p.name: p.read_text() for p in (run_dir / ".hydra").glob("*.yaml")} == hydra_files
    assert collect_runs([tmp_path])["batch_size"].tolist() == [100]  # the batch size it trained with


def recorded_code(package_parent, cwd) -> tuple:
    """git_commit, git_dirty and git_diff_hash as a run records them with sngm_bench imported from `package_parent`."""
    environment = run_command([sys.executable, "-c", "import json, torch, sngm_bench.records as r; "
                               "print(json.dumps(r.environment(torch.device('cpu'))))"], cwd,
                              {"PYTHONPATH": str(package_parent)})
    assert environment.returncode == 0, environment.stderr[-2000:]
    recorded = json.loads(environment.stdout)
    return recorded["git_commit"], recorded["git_dirty"], recorded["git_diff_hash"]


def git_repository(folder, *tracked) -> list:
    """`folder` made a git repository with `tracked` committed; returns the git command for it."""
    git = ["git", "-C", folder, "-c", "user.name=u", "-c", "user.email=u@x"]
    for args in (["init", "-q"], ["add", *tracked], ["commit", "-qm", "first"]):
        run_command([*git, *args], folder).check_returncode()
    return git


def test_an_installed_package_inside_another_repository_records_no_commit_of_that_repository(tmp_path):
    import shutil

    import sngm_bench

    project, site = tmp_path / "project", tmp_path / "project" / ".venv" / "site-packages"
    shutil.copytree(os.path.dirname(sngm_bench.__file__), site / "sngm_bench")  # as pip installs it
    (project / ".gitignore").write_text(".venv/\n")
    git_repository(project, ".gitignore")
    assert recorded_code(site, tmp_path) == ("unknown", None, None)


def test_sessions_with_different_uncommitted_changes_record_different_code(tmp_path):
    import shutil

    import sngm_bench

    shutil.copytree(os.path.dirname(sngm_bench.__file__), tmp_path / "sngm_bench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git = git_repository(tmp_path, "sngm_bench")
    commit = run_command([*git, "rev-parse", "HEAD"], tmp_path).stdout.strip()
    assert recorded_code(tmp_path, tmp_path) == (commit, False, None)
    schedule = tmp_path / "sngm_bench" / "schedule.py"
    hashes = []
    for change in (b"# one change\n", b"# a Latin-1 caf\xe9\n"):  # a diff need not be UTF-8
        schedule.write_bytes(schedule.read_bytes() + change)
        code = recorded_code(tmp_path, tmp_path)
        assert code[:2] == (commit, True)
        hashes.append(code[2])
    assert None not in hashes and hashes[0] != hashes[1]


def test_a_new_module_not_yet_added_to_git_is_recorded_as_changed_code(tmp_path):
    import shutil

    import sngm_bench

    shutil.copytree(os.path.dirname(sngm_bench.__file__), tmp_path / "sngm_bench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git = git_repository(tmp_path, "sngm_bench")
    commit = run_command([*git, "rev-parse", "HEAD"], tmp_path).stdout.strip()
    # Neither a run folder, notes beside the package nor Python's bytecode caches are code that runs.
    (tmp_path / "outputs" / "run").mkdir(parents=True)
    (tmp_path / "outputs" / "run" / "summary.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "sngm_bench" / "optim" / "__pycache__").mkdir()
    (tmp_path / "sngm_bench" / "optim" / "__pycache__" / "sngm.cpython-311.pyc").write_bytes(b"\0")
    assert recorded_code(tmp_path, tmp_path) == (commit, False, None)
    module = tmp_path / "sngm_bench" / "optim" / "myopt.py"
    hashes = []
    for version in ("STEP = 1\n", "STEP = 2\n"):
        module.write_text(version)
        code = recorded_code(tmp_path, tmp_path)
        assert code[:2] == (commit, True)
        hashes.append(code[2])
    assert None not in hashes and hashes[0] != hashes[1]


# The command line, with a step that runs out of CPU memory: a plain RuntimeError, which the run
# cannot name (torch.OutOfMemoryError is the GPU's).
CPU_OUT_OF_MEMORY = """
import sys, torch
import sngm_bench.train as train

real_step, steps = train.train_step, []

def train_step(*args, **kwargs):
    steps.append(1)
    if len(steps) == 2:
        torch.empty(2 ** 50, dtype=torch.uint8)  # a petabyte
    return real_step(*args, **kwargs)

train.train_step = train_step
from sngm_bench.cli import main
main()
"""


def test_a_run_that_fails_with_an_unexpected_error_is_recorded_as_failed(tmp_path, cifar_root):
    result = run_command([sys.executable, "-c", CPU_OUT_OF_MEMORY, *TINY, "hydra.run.dir=run"], tmp_path,
                         {"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 1 and "DefaultCPUAllocator" in result.stderr
    recorded = summary(tmp_path / "run")
    assert recorded["status"] == "failed" and "RuntimeError: " in recorded["error"]
    assert "DefaultCPUAllocator: can't allocate memory" in recorded["error"]
    assert collect_runs([tmp_path])["status"].tolist() == ["failed"]  # not interrupted: its process is gone


# The command line, killed (as by kill -9) while it evaluates epoch 2.
KILLED_IN_SECOND_EVALUATION = """
import os
import sngm_bench.train as train

real_evaluate, calls = train.evaluate, []

def evaluate(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os._exit(9)
    return real_evaluate(*args, **kwargs)

train.evaluate = evaluate
from sngm_bench.cli import main
main()
"""


def test_a_killed_runs_summary_counts_the_epochs_it_saved(tmp_path, cifar_root):
    result = run_command([sys.executable, "-c", KILLED_IN_SECOND_EVALUATION, *TINY, "epochs=2", "hydra.run.dir=run"],
                         tmp_path, {"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 9
    recorded, (row,) = summary(tmp_path / "run"), read_metrics(tmp_path / "run")
    assert (recorded["status"], recorded["epochs"], recorded["best_test_acc"]) == ("running", 1, row["test_acc"])
    assert recorded["wall_seconds"] >= row["epoch_seconds"]
    assert collect_runs([tmp_path])[["status", "epochs"]].values.tolist() == [["interrupted", 1]]


# The command line, killed (kill -9) as it calls os.{call} on its second checkpoint's temporary file:
# fsync, the data written and nothing renamed yet; replace, the current checkpoint kept as the
# previous one and the new one about to be renamed over it.
KILLED_WRITING_THE_SECOND_CHECKPOINT = """
import os, signal

real_call, checkpoints = os.{call}, []

def call(file, *args):
    name = os.readlink(f"/proc/self/fd/{{file}}") if isinstance(file, int) else str(file)
    if name.endswith(".checkpoint.pt.tmp"):
        checkpoints.append(file)
        if len(checkpoints) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_call(file, *args)

os.{call} = call
from sngm_bench.cli import main
main()
"""

# The command line, saying at its first step whether a partial checkpoint is in the run folder `run`.
PARTIAL_CHECKPOINT_AT_THE_FIRST_STEP = """
import sys
from pathlib import Path
import sngm_bench.train as train

real_step, steps = train.train_step, []

def train_step(*args, **kwargs):
    if not steps:
        print("partial checkpoint at the first step:", Path("run/.checkpoint.pt.tmp").exists(), file=sys.stderr)
    steps.append(1)
    return real_step(*args, **kwargs)

train.train_step = train_step
from sngm_bench.cli import main
main()
"""


@pytest.mark.parametrize("call", ["fsync", "replace"])
def test_a_checkpoint_killed_mid_write_is_removed_and_the_run_resumes_from_the_one_before(tmp_path, cifar_root,
                                                                                          call):
    args, env = [*TINY, "epochs=2", "hydra.run.dir=run"], {"SNGM_DATA": str(cifar_root)}
    killed = run_command([sys.executable, "-c", KILLED_WRITING_THE_SECOND_CHECKPOINT.format(call=call), *args],
                         tmp_path, env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = tmp_path / "run"
    partial = run_dir / ".checkpoint.pt.tmp"  # epoch 2's weights, all written: what the run would have ended with
    uninterrupted = torch.load(partial, weights_only=False)["model"]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["epoch"] == 2  # continues at epoch 2

    rerun = run_command([sys.executable, "-c", PARTIAL_CHECKPOINT_AT_THE_FIRST_STEP, *args], tmp_path, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "partial checkpoint at the first step: False" in rerun.stderr
    recorded = summary(run_dir)
    assert (recorded["status"], recorded["epochs"], resumed_where(recorded)) == ("completed", 2, [(2, 0)])
    assert [row["epoch"] for row in read_metrics(run_dir)] == [1, 2]  # the killed session's epoch 2 once
    resumed = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in uninterrupted)
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("hard_links", [True, False])
def test_the_file_a_write_replaces_is_kept_with_or_without_hard_links(tmp_path, monkeypatch, hard_links):
    from sngm_bench.records import write_atomic

    if not hard_links:  # as on a file system that has none
        def link(*args):
            raise PermissionError(1, "Operation not permitted")
        monkeypatch.setattr(os, "link", link)
    path, kept = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    write_atomic(path, "1", keep=kept.name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    for version in "23":
        write_atomic(path, version, keep=kept.name)
    assert (path.read_text(), kept.read_text()) == ("3", "2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_without_hard_links_every_file_a_write_renames_into_place_is_on_disk_first(tmp_path, monkeypatch):
    # The kept checkpoint is then a copy: renamed before its data is on disk, a power cut can leave it empty.
    from sngm_bench.records import write_atomic

    synced, renamed = set(), []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(source, target):
        renamed.append((Path(source).name, str(source) in synced))
        synced.discard(str(source))
        real_replace(source, target)

    def link(*args):  # as on a file system that has no hard links
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)
    for version in "12":
        write_atomic(tmp_path / "checkpoint.pt", version, keep="checkpoint.prev.pt")
    assert renamed == [(".checkpoint.pt.tmp", True), (".checkpoint.prev.pt.tmp", True), (".checkpoint.pt.tmp", True)]


def test_a_folder_a_live_run_holds_is_never_removed_as_a_stub(tmp_path):
    """Two commands that both created the folder: the one refused must not remove it under the other."""
    from sngm_bench.run_folder import FolderLock, remove_stub

    run_dir = tmp_path / "outputs" / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "train.log").write_text("")
    with FolderLock(run_dir):  # the other command, loading its data
        remove_stub(run_dir, tmp_path)
        assert (run_dir / "train.log").exists()
    remove_stub(run_dir, tmp_path)
    assert list(tmp_path.iterdir()) == []  # its own stub goes, and the folders it created for it


# The command line, with another start's Hydra rewriting .hydra/config.yaml while this one loads its data.
HYDRA_FILES_REWRITTEN_DURING_SETUP = """
from pathlib import Path
from hydra.core.hydra_config import HydraConfig
import sngm_bench.train as train

real_build_data = train.build_data

def build_data(*args, **kwargs):
    (Path(HydraConfig.get().runtime.output_dir) / ".hydra" / "config.yaml").write_text("log_every: 7\\n")
    return real_build_data(*args, **kwargs)

train.build_data = build_data
from sngm_bench.cli import main
main()
"""


def test_the_hydra_record_is_the_training_starts_even_if_another_start_rewrote_it(tmp_path, cifar_root):
    result = run_command([sys.executable, "-c", HYDRA_FILES_REWRITTEN_DURING_SETUP, *TINY, "log_every=5",
                          "hydra.run.dir=run"], tmp_path, {"SNGM_DATA": str(cifar_root)})
    assert result.returncode == 0, result.stderr[-3000:]
    for folder in (".hydra", ".hydra/trained"):
        assert yaml.safe_load((tmp_path / "run" / folder / "config.yaml").read_text())["log_every"] == 5, folder
