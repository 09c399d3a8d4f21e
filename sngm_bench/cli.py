"""The `sngm-bench` command: a Hydra app that trains one run, or a sweep with `-m`.

Before Hydra takes over, every combination of the command-line overrides is composed once, so
an unknown option, a misspelled key or a value of the wrong type ends in ONE line on stderr and
exit code 2 (Hydra's own reports span several lines); so does a run folder that cannot be
created. Value errors found later (a zero batch size, missing data, no GPU) are `UserError`s and
end the same way, leaving no run folder behind; inside a sweep they are recorded as that run's
`status: failed` and the sweep goes on.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import warnings
from importlib import metadata, resources
from pathlib import Path

import hydra
from hydra import compose, initialize_config_module
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException
from tqdm import tqdm

from sngm_bench import callbacks, checkpoint, grid, invocation, run_folder, stop
from sngm_bench.config import CONFIG_MODULE, check_values, keys_outside_schema, optimizer_settings
from sngm_bench.errors import Interrupted, LostPeer, StoppedAtOnce, UserError
from sngm_bench.identity import flatten, training_config

log = logging.getLogger("sngm_bench")
_created: dict[Path, Path] = {}  # run folder this command creates -> the deepest folder that existed before


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _did_you_mean(word: str, choices) -> str:
    """'; did you mean X?' for the choice closest to `word`; `choices` maps a candidate to how it is
    shown (a list shows each as it is)."""
    shown = choices if isinstance(choices, dict) else {choice: choice for choice in choices}
    match = difflib.get_close_matches(word, list(shown), n=1)
    return f"; did you mean '{shown[match[0]]}'?" if match else ""


def _unknown_key_message(key: str, overrides: list[str]) -> str:
    """'unknown key' plus the keys its parent accepts, read from the config composed without it
    and without the other keys `+` adds beside it, and the closest valid key: a sibling, else any
    key of the config with a close last name."""
    parent, _, name = key.rpartition(".")

    def added_beside(override: str) -> bool:
        other = override.lstrip("+~").split("=", 1)[0]
        return other == key or (override.startswith("+") and other.rpartition(".")[0] == parent)

    others = [o for o in overrides if not added_beside(o)]
    try:
        config = compose("config", overrides=others)
        node = OmegaConf.select(config, parent) if parent else config
        siblings = sorted(str(k) for k in node.keys())
    except (HydraException, OmegaConfBaseException, AttributeError):
        return f"unknown key '{key}'"
    where = f"'{parent}'" if parent else "the top level"
    # At the top level, a misspelt group (experimnt=smoke) is meant as often as a misspelt key.
    nearby = {sibling: f"{parent}.{sibling}" for sibling in siblings} if parent else \
        {candidate: candidate for candidate in [*siblings, *(group.name for group in _group_folders())]}
    hint = _did_you_mean(name, nearby)
    if not hint:
        hint = _did_you_mean(name, {k.rpartition(".")[2]: k for k in flatten(OmegaConf.to_container(config))})
    if not hint and parent == "optimizer" and "_target_" in node:  # a class argument the file does not set
        from sngm_bench.optim.target import argument_hint  # imports torch: only on this error's path

        hint = argument_hint(str(node._target_), name)
    return f"unknown key '{key}': {where} has {', '.join(siblings)}{hint}"


SEARCHPATH_MISSING = r"provider=hydra\.searchpath in command-line, path=(.*) is not available"


def _group_not_in_defaults(err: Exception) -> str | None:
    """The group of `sweep=smoke`, which Hydra cannot override because no default picks it."""
    match = re.match(r"Could not override '([^']+)'\. No match in the defaults list", str(err))
    return match[1] if match else None


def _composition_error(err: Exception, overrides: list[str]) -> UserError:
    if isinstance(err, MissingConfigException) and "submitit" in (err.missing_cfg_file or ""):
        return UserError("the SLURM launcher needs the slurm extra: pip install 'sngm-bench[slurm]'")
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, _, choice = err.missing_cfg_file.rpartition("/")
        options = sorted(err.options or [])
        return UserError(f"unknown {group} '{choice}': choose one of {', '.join(options)}"
                         f"{_did_you_mean(choice, options)}")
    if missing := re.match(SEARCHPATH_MISSING, str(err)):
        return UserError(f"hydra.searchpath: no config folder {missing[1]} (a relative path is read from the "
                         f"working directory, {os.getcwd()})")
    if group := _group_not_in_defaults(err):
        choice = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == group), "NAME")
        return UserError(f"no default picks a {group}, so {group}={choice} cannot replace one: add it with "
                         f"+{group}={choice}")
    cause = err.__cause__ or err
    key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
        return UserError(_unknown_key_message(key, overrides))
    if key:
        return UserError(f"bad value for '{key}': {_first_line(cause)}")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and "raised while composing" in lines[0]:  # Hydra folds the cause into its text
        return UserError(f"{lines[0].split(':')[0]}: {lines[1]}")
    return UserError(_first_line(err))


def sweep_combinations(overrides: list[str], composed: dict | None = None) -> list[list[str]]:
    """The overrides of each run that `sngm-bench -m OVERRIDES` launches, expanded as Hydra's basic
    sweeper does: the grid of the config's `hydra.sweeper.params` (set by a `+sweep=NAME` preset),
    where a command-line value of the same key wins. Call it inside `initialize_config_module`.
    `composed` receives the config it composes, keyed by its overrides (those that sweep nothing),
    for a caller that composes each run next: a single run's is then composed once."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    try:
        config = compose("config", overrides=fixed, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, UserWarning) as err:
        raise _composition_error(err, fixed) from None
    if composed is not None:
        composed[tuple(fixed)] = config
    return grid.expand(config.hydra.sweeper.params or {}, overrides)


def _parse_error(err: OverrideParseException, overrides: list[str]) -> UserError:
    """The override that Hydra's grammar refuses, named; a value with characters the grammar
    reserves (dataset.root=~/data, hydra.run.dir=out/a=b) parses in quotes, and the line says how.
    One without `=` (smoke) gets the form an override has: Hydra says so on a second line."""
    parser = OverridesParser.create()

    def parses(override: str) -> bool:
        try:
            parser.parse_overrides([override])
        except OverrideParseException:
            return False
        return True

    bad = next(override for override in overrides if not parses(override))
    key, equals, value = bad.partition("=")
    if not equals:
        return UserError(f"cannot parse the override {bad}: an override is key=value or group=option")
    if "LexerNoViableAltException" in str(err) or "=" in value:
        return UserError(f"cannot parse the override {bad}: a value with characters such as ~, # or = goes in "
                         f"quotes: '{key}=\"{value}\"'")
    return UserError(f"cannot parse the override {bad}: {_first_line(err)}")


def check_overrides(overrides: list[str], multirun: bool, printing: bool = False) -> Path:
    """Compose every combination the overrides describe, and resolve it as its run will; raise
    UserError on the first that fails, on runs that would share a folder and on a folder name no
    file system takes. Returns the run folder (the sweep folder with -m) they will write to.
    `printing` (--cfg): one config is printed, a sweep preset's grid is not run."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        raise _parse_error(err, overrides) from None
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise UserError(f"{sweeps[0]} is a sweep: add -m (--multirun) to run every combination")
    with warnings.catch_warnings(), initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        warnings.filterwarnings("error", SEARCHPATH_MISSING)  # Hydra only warns, then finds none of its configs
        composed = {}
        combinations = sweep_combinations(overrides, composed)
        if not multirun:
            if len(combinations) > 1 and not printing:
                raise UserError("the config sweeps a grid (hydra.sweeper.params, e.g. of a +sweep preset): "
                                "add -m (--multirun) to run it")
            combinations = [overrides]
        if not combinations:
            raise UserError(f"the sweep {' '.join(overrides)} has no runs: a range or a glob(...) that gives no value")
        folders, runs = set(), {}  # sweep (or run) folders; run folder -> (what it trains, its overrides)
        # Hydra composes a few runs a second: a grid of a hundred takes a while, shown on a terminal.
        for number, combination in enumerate(tqdm(combinations, desc="checking the sweep's runs", unit="run",
                                                  leave=False, dynamic_ncols=True,
                                                  disable=None if len(combinations) > 1 else True)):
            try:
                config = composed.get(tuple(combination)) or compose("config", overrides=combination,
                                                                     return_hydra_config=True)
                if outside := keys_outside_schema(config):  # added by `+key=...`
                    raise UserError(_unknown_key_message(outside[0], combination))
                optimizer_settings(config.optimizer)  # a `_target_` class and its arguments, before any run starts
                slurm = config.hydra.launcher._target_.endswith(".SlurmLauncher")
                if multirun and slurm and not shutil.which("sbatch"):
                    raise UserError("hydra/launcher=slurm submits jobs with sbatch, which is not on this machine's "
                                    "PATH: run the sweep on a SLURM login node (hydra/launcher=submitit_local "
                                    "runs it here)")
                run_dir, folder = _folders(config, multirun, number)
                # Resolved as the run resolves it: an unset ${oc.env:...} fails here, not in the run.
                trained = json.dumps(training_config(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])),
                                     sort_keys=True, default=str)
            except (HydraException, OmegaConfBaseException, UserWarning, UserError) as err:
                error = err if isinstance(err, UserError) else _composition_error(err, combination)
                if len(combinations) > 1:
                    error = UserError(f"{error} (in the sweep combination {' '.join(combination)})")
                raise error from None
            if run_dir in runs and runs[run_dir][0] != trained and _named_by_overrides(config):
                raise UserError(f"the sweep combinations {' '.join(runs[run_dir][1])} and {' '.join(combination)} "
                                f"train differently but share the run folder {run_dir} (experiment, sweep, name "
                                "and untrained keys stay out of folder names): sweep them in separate commands")
            runs[run_dir] = (trained, combination)
            folders.add(folder)
    if len(folders) > 1:  # the sweep's lists of started and failed runs are kept in one sweep folder
        raise UserError(f"the sweep's runs would go to {len(folders)} sweep folders "
                        f"({', '.join(map(str, sorted(folders)))}), one per experiment or name: run one sweep for each")
    return folders.pop()


def _folders(config: DictConfig, multirun: bool, number: int) -> tuple[Path, Path]:
    """The run folder of the composed `config`, job `number` of its sweep, and the folder the command
    creates for it (the sweep folder with -m); a UserError for a name longer than file systems allow
    (255 bytes): many overrides make a long one, and creating it would fail with a traceback."""
    with open_dict(config):  # as the basic launcher numbers its jobs, for ${hydra.job.num} in names
        config.hydra.job.num = config.hydra.job.id = number
    HydraConfig.instance().set_config(config)  # resolves ${hydra:...} in the folder names
    sweep = config.hydra.sweep
    run_dir = Path(os.path.abspath(Path(sweep.dir, sweep.subdir) if multirun else config.hydra.run.dir))
    if long := next((part for part in run_dir.parts if len(os.fsencode(part)) > 255), None):
        raise UserError(f"the run folder name {long[:60]}... is {len(os.fsencode(long))} bytes, more than a file "
                        "system allows (255): name the folder yourself with hydra.run.dir=... (with -m, "
                        "hydra.sweep.subdir=...)")
    return run_dir, Path(os.path.abspath(sweep.dir)) if multirun else run_dir


def _named_by_overrides(config: DictConfig) -> bool:
    """Whether run folders are named by the overrides (the default hydra.sweep.subdir), where runs that
    differ only in keys left out of names share one; a subdir of the user's own (${now:...},
    ${hydra.job.num}) is left to the user."""
    return "override_dirname" in str(OmegaConf.to_container(config.hydra.sweep)["subdir"])


def _make_output_folder(folder: Path, multirun: bool) -> None:
    """Create the run folder (the sweep folder with -m) before Hydra does, so that a path that
    cannot hold one, or an existing folder nothing can be written in (Hydra's log file would fail
    with a traceback), ends in one line, and remember what this command created (under torchrun,
    rank 0 does it while the other processes wait)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise UserError(f"cannot {'write in' if folder.is_dir() else 'create'} the {'sweep' if multirun else 'run'} "
                        f"folder {folder}: {err.strerror or err}; choose another "
                        f"(hydra.{'sweep' if multirun else 'run'}.dir=...)") from None
    if existing != folder and not multirun:
        _created[folder] = existing


def _wait_for_rank_0(folder: Path, seconds: float = 60) -> None:
    """Under torchrun, wait for rank 0 to create the run folder: Hydra would create it in this
    process too, and rank 0 must see whether it existed before the command (`_created`). Should
    rank 0 end first, torchrun stops this process; should rank 0 name another folder (a
    `${now:...}` in hydra.run.dir), the wait ends after `seconds`."""
    deadline = time.time() + seconds
    while not folder.is_dir() and time.time() < deadline:
        time.sleep(0.05)


def _group_folders() -> list:
    """The config groups a user can pick: the folders of configs/, by name."""
    root = resources.files(CONFIG_MODULE)
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")),
                  key=lambda p: p.name)


def config_groups() -> str:
    """'  group: option, option' per config group a user can pick, for --help."""
    def options(group) -> str:
        return ", ".join(sorted(f.name[:-5] for f in group.iterdir() if f.name.endswith(".yaml")))

    return "\n".join(f"  {group.name}: {options(group)}" for group in _group_folders())


def version() -> str:
    return (f"sngm-bench {metadata.version('sngm-bench')} (torch {metadata.version('torch')}, "
            f"hydra-core {metadata.version('hydra-core')})")


if not OmegaConf.has_resolver("sngm_groups"):
    OmegaConf.register_new_resolver("sngm_groups", config_groups)


def _record_failure(run_dir: Path, cfg: DictConfig, err: UserError) -> None:
    from sngm_bench import records

    summary = {"status": "failed", "error": str(err), "seed": cfg.seed, "batch_size": cfg.batch_size,
               **invocation.commands()}  # to run it again once the config or the data is fixed
    records.write_json(run_dir / records.SUMMARY_FILE, summary)
    callbacks.note_failure(run_dir)


def train_job(cfg: DictConfig) -> dict:
    """The job Hydra runs, for the command line and for `sngm_bench.run` alike: check the values,
    then train in Hydra's run folder; returns the run's summary. Hydra rewrote the folder's
    `.hydra/` as the job started: however the job ends, the files of the start that trained the
    folder's run go back (`run_folder.restore_hydra_files`), those of this start if it trained."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    hydra_dir = run_dir / hydra_cfg.output_subdir if hydra_cfg.output_subdir is not None else None
    try:
        check_values(cfg)
        from sngm_bench.train import train  # torch is imported only once a run starts

        return train(cfg, run_dir, hydra_dir)
    finally:
        run_folder.restore_hydra_files(hydra_dir)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
def run(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        with _stop_signals_as_ctrl_c():
            train_job(cfg)
    except Interrupted as err:
        if invocation.torchrun_rank():
            # Every process stopped at the same step, and rank 0 is still writing the checkpoint and the
            # summary: a failed exit here would make torchrun stop rank 0 (SIGTERM) before it is done.
            return
        _fail(str(err), err.exit_code, stopped=True)  # a sweep stops too: the user asked to stop, or time is up
    except KeyboardInterrupt as err:  # a stop signal before training began, or a second one during it
        _remove_if_stub(run_dir)
        _end_stopped_at_once(_stopped_at_once(run_dir), err)
    except UserError as err:
        if not in_sweep:
            _remove_if_stub(run_dir)
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            _fail(str(err), lost_peer=isinstance(err, LostPeer))  # SystemExit passes Hydra's report
        if run_folder.holds_run(run_dir):  # the run recorded its own failure, or the folder holds another run
            log.error("run failed: %s", err)
            callbacks.note_failure(run_dir)
        else:
            _record_failure(run_dir, cfg, err)  # sngm_bench.callbacks logs it as the run's last line


def _stopped_at_once(run_dir: Path) -> str:
    """What a run stopped without writing a checkpoint of its own can do next."""
    if checkpoint.exists(run_dir):
        message = f"stopped at once, without a new checkpoint; run the same command again to continue from " \
                  f"the last one in {run_dir}"
    else:
        message = "stopped at once, before the run's first checkpoint; run the same command again to start it"
    if invocation.torchrun_rank() is not None:
        # torchrun's SIGTERM after another process failed, or Ctrl-C, which reaches every process and torchrun
        message += " (if another process failed first, torchrun's report names it as the first observed failure)"
    return message


@contextlib.contextmanager
def _stop_signals_as_ctrl_c():
    """SIGTERM and SIGUSR2 (SLURM's preemption, `timeout`, torchrun stopping the other processes)
    stop the command and its jobs as Ctrl-C does, instead of killing them: before training (checking
    a sweep, Hydra's setup, loading the data) at once, leaving no stub run folder, then as
    `stop.StopRequest` says. Only where no one else handles them: hydra-submitit-launcher's
    handlers (SIGTERM ignored, SIGUSR2 requeues the job) stay.
    Under torchrun, SIGTERM is ignored once the job has ended: torchrun sends it to the other
    processes as soon as one ends with an error, and rank 0 must still remove the run folder it
    created and say why it ended. A signal that comes while the job is already ending with its
    own error or stop (its cleanup: closing the process group, the folder lock) leaves that
    outcome standing."""
    previous = {sig: signal.signal(sig, stop.stop_at_once) for sig in stop.SIGNALS
                if signal.getsignal(sig) is signal.SIG_DFL}
    try:
        yield
    except KeyboardInterrupt as err:
        if isinstance(err.__context__, (UserError, Interrupted)):
            raise err.__context__ from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if invocation.torchrun_rank() is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _remove_if_stub(run_dir: Path) -> None:
    """After a UserError or a stop before training: the run folder goes if this command created it
    and no run started there."""
    if run_dir in _created and not run_folder.holds_run(run_dir):
        run_folder.remove_stub(run_dir, _created[run_dir])


def run_overrides(overrides: list[str]) -> dict:
    """One run as `sngm-bench OVERRIDES` makes it (same checks, run folder, records and logs),
    for `sngm_bench.run`: errors are raised, never turned into an exit. The command's flags (-m,
    --cfg) are not overrides: Hydra's grammar would refuse them with advice about quoting."""
    if flag := next((override for override in overrides if override.startswith("-")), None):
        raise UserError(f"{flag} is a flag of the sngm-bench command, not an override: a sweep runs on the command "
                        f"line (sngm-bench -m ...), sngm_bench.run trains one run")
    folder = check_overrides(overrides, multirun=False)
    _make_output_folder(folder, multirun=False)

    def job(cfg: DictConfig):  # a UserError comes back as the job's value: Hydra would print its own line
        try:
            return train_job(cfg)
        except UserError as err:
            return err

    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        hydra_app = GlobalHydra.instance().hydra
        result = hydra_app.run(config_name="config", task_function=job, overrides=overrides).return_value
    if isinstance(result, UserError):
        _remove_if_stub(folder)
        raise result
    return result


def _fail(message: str, code: int = 2, lost_peer: bool = False, stopped: bool = False) -> None:
    """End the command with `message` as one line on stderr and exit code `code`: an error, or where
    the user or a deadline `stopped` the command (a message that says so), no error. The processes
    torchrun starts share one terminal and mostly end alike (same config, same data): rank 0 says
    it, and each leaves it in its error file, where torchrun's failure report reads it. That report
    is where the user sees an error only another process met, or one that another process ended
    with first (torchrun then stops rank 0 before it can say it). Elsewhere every process says it
    (a SLURM task writes its own log).

    A `lost_peer` (errors.LostPeer) leaves no error file: the report names as the first failure the
    one with the earliest second, an error file's or, for a process that left none (killed), the
    second torchrun noticed its end. A survivor's file could carry an earlier second than that, and
    be named; so could the survivor itself, ended in the same poll of torchrun's (`_LostPeerExit`)."""
    rank = invocation.torchrun_rank()
    if rank is not None and not lost_peer:
        _tell_torchrun(message)
    if not rank:
        print(f"sngm-bench: {message}" if stopped else f"sngm-bench: error: {message}", file=sys.stderr)
    raise _LostPeerExit(code) if lost_peer else SystemExit(code)


def _end_stopped_at_once(message: str, err: KeyboardInterrupt) -> None:
    """End a command stopped at once with `message` and its signal's exit code (Ctrl-C: SIGINT's)."""
    _fail(message, 128 + (err.signum if isinstance(err, StoppedAtOnce) else signal.SIGINT), stopped=True)


class _LostPeerExit(SystemExit):
    """The exit of a process whose peer ended first. It keeps Python's teardown, which takes long
    enough that torchrun notices the peer's end first (every 0.1 s) and names the peer in its report."""


def _tell_torchrun(message: str) -> None:
    """Write `message` to the file torchrun names in TORCHELASTIC_ERROR_FILE, in the form its
    ErrorHandler writes (less the traceback), so its report shows the line instead of a link."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        error = {"message": {"message": message, "extraInfo": {"timestamp": str(int(time.time()))}}}
        with contextlib.suppress(OSError):
            Path(path).write_text(json.dumps(error))


def _parse_options():
    """Hydra's options and overrides of this command, or one line on why argparse refuses them
    (Hydra's own report prints its whole usage first, and only once the run folder exists)."""
    parser = get_args_parser()
    parser.error = _fail  # argparse's messages: an unknown --cfg choice, an option without its value
    args, unknown = parser.parse_known_args()
    if unknown and unknown[0].startswith("-"):
        _fail(f"unknown option {unknown[0]}; sngm-bench --help lists the options")
    if unknown:  # Hydra takes its overrides from before the first option or after the last
        _fail(f"{' '.join(unknown)}: overrides on both sides of an option; put the options (-m, --cfg job, ...) "
              "first, then every override")
    return args


def main() -> None:
    """The `sngm-bench` command; a process of a multi-process run ends through `_end_without_teardown`."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        _command()
        return
    try:
        _command()
    except _LostPeerExit:
        raise
    except SystemExit as ended:
        _end_without_teardown(ended.code)
    _end_without_teardown(0)


def _end_without_teardown(code: int | str | None) -> None:
    """End a process of a multi-process run with the exit code of `sys.exit(code)`, skipping the
    interpreter's teardown, in which gloo can abort it: a gloo worker thread that still holds the
    last collective's tensors needs the GIL to free them, and a thread asking for the GIL once
    Python is finalizing is ended by pthread_exit, which ends the process with SIGABRT ("terminate
    called without an active exception"; pytorch/pytorch#179291): a finished run reported failed, a
    stop's or a deadline's exit code lost. Exit handlers (log files, child processes) still run."""
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else int(code is not None))


def _command() -> None:
    if "--version" in sys.argv[1:]:  # Hydra's own --version names Hydra's version only
        print(version())
        return
    stop.mark_command_start()
    invocation.mark_launch(sys.argv[1:])
    args = _parse_options()
    try:
        with _stop_signals_as_ctrl_c():
            _check_and_run(args)
    except KeyboardInterrupt as err:  # outside a job (`run` handles its own): checking a sweep's runs, which
        for folder in list(_created):  # takes a while, or Hydra setting a job up, before or between a sweep's runs
            _remove_if_stub(folder)
        _end_stopped_at_once("stopped at once, before a run's training began; run the same command again to "
                             "continue", err)
    if callbacks.failed_runs:
        _fail(f"{len(callbacks.failed_runs)} run(s) of the sweep failed; see summary.json in "
              f"{', '.join(callbacks.failed_runs)}")


def _check_and_run(args) -> None:
    """Check the overrides, create the run folder (the sweep folder, locked, with -m), then run Hydra's app."""
    sweep_locks = contextlib.ExitStack()
    if not (args.help or args.hydra_help or args.info or args.shell_completion):
        try:
            if args.multirun and args.cfg:
                raise UserError("--cfg prints one config; drop -m (--multirun) to use it")
            if args.multirun and int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise UserError("torchrun starts one run; a sweep (-m) launches its runs itself "
                                "(hydra/launcher=slurm for multi-GPU jobs)")
            folder = check_overrides(args.overrides, args.multirun, printing=bool(args.cfg))
            if not args.cfg and int(os.environ.get("RANK", "0")) == 0:
                _make_output_folder(folder, args.multirun)
                if args.multirun:  # a second sweep there would share its lists of started and failed runs
                    sweep_locks.enter_context(run_folder.FolderLock(
                        folder, "another sweep is running in {folder}; wait for it, or give this one its own "
                        "hydra.sweep.dir"))
            elif not args.cfg and invocation.torchrun_rank():
                _wait_for_rank_0(folder)
        except UserError as err:
            _fail(str(err))
    if int(os.environ.get("RANK", "0")) > 0:
        # Every process composes the same config and run folder; only rank 0 writes Hydra's files.
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    with sweep_locks:
        run()
