"""Helpers for the end-to-end tests: run the real console scripts of this virtualenv.

`run` starts a console script as a forked child of the test process rather than as a fresh
interpreter: a process of its own (its argv, standard streams, exit status; killed as any
process is), running the installed entry point, whose only difference from `bin/<tool>` is that
the libraries it needs are already imported. A fairseq process spends about 8 s importing before
it trains, which was most of the suite's time; the forked run trains bit-identical weights.
Import-time behaviour (warnings printed while importing, console-script wrappers) is checked by
the runs started with `fresh=True` and by the tests that start scripts with subprocess."""

import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from importlib.metadata import entry_points
from pathlib import Path

import torch
import torch.multiprocessing as mp
from fairseq.logging import progress_bar
from fairseq.utils import import_user_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

BIN = Path(sys.executable).parent
USER_DIR = str(Path(__file__).resolve().parents[1] / "user_dir")
EVERY_RANK = str(Path(__file__).resolve().parent / "fairseq_train_every_rank.py")


def token_task_args(task: str, metric: str, seed: int) -> tuple[list[str], list[str]]:
    """The options of a per-token task's end-to-end tests: the task's own (fairseq-validate's
    too), and those that also train a tiny MoE with OMoE (cycles of 3 + 3 updates, validation
    every 6 updates, checkpoints selected by `metric`)."""
    task_args = ["--user-dir", USER_DIR, "--task", task, "--max-positions", "128",
                 "--criterion", task, "--cpu", "--num-workers", "0"]
    return task_args, task_args + [
        "--arch", "omoe_roberta_tiny", "--moe-experts", "4", "--moe-top-k", "1",
        "--optimizer", "omoe", "--lr", "1e-3", "--omoe-accumulate-steps", "3",
        "--omoe-orthogonal-steps", "3", "--batch-size", "16", "--seed", str(seed),
        "--best-checkpoint-metric", metric, "--maximize-best-checkpoint-metric",
        "--log-format", "simple", "--log-interval", "5", "--no-epoch-checkpoints",
        "--validate-interval-updates", "6",
    ]


def show_warning(message, category, filename, lineno, file=None, line=None):
    """Print a warning to stderr, as an interpreter started afresh does."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def fresh_interpreter_state(tool: str, args: tuple[str, ...], module: str) -> None:
    """In a forked child, undo what this test process changed in the interpreter: its argv, the
    warning filters and recorder pytest installs, the logging handlers, the exit functions, the
    imported `--user-dir` (the script imports it again: registering the plugin sets warning
    filters too), the script's own module (imported again, as a fresh process imports it:
    fairseq's CLIs set up logging when imported)."""
    sys.argv = [str(BIN / tool), *args]
    sys.modules.pop(module, None)
    sys.modules.pop(Path(USER_DIR).name, None)
    import_user_module.__dict__.pop("memo", None)  # the directories it has imported
    warnings.resetwarnings()
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                     ResourceWarning):
        warnings.simplefilter("ignore", category)
    warnings.showwarning = show_warning
    for handler in logging.root.handlers[:]:
        logging.root.removeHandler(handler)
    logging.root.setLevel(logging.WARNING)
    atexit._clear()  # the test process's exit functions are not the script's to run,
    atexit.register(progress_bar._close_writers)  # but fairseq registers this one on import


def start(tool: str, args: tuple[str, ...], stdout: int, stderr: int) -> int:
    """Start console script `tool` as a forked child writing to these file descriptors, stdin
    empty; its pid. The child exits as the interpreter would: status 0, the code of SystemExit
    (its message on stderr), or 1 with the traceback; the script's exit functions run first
    (fairseq closes its TensorBoard writers in one)."""
    (entry,) = entry_points(group="console_scripts", name=tool)
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        fresh_interpreter_state(tool, args, entry.module)
        try:
            code = entry.load()()
        except SystemExit as stop:
            code = stop.code
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        atexit._run_exitfuncs()
        if code is None or isinstance(code, int):
            status = code or 0
        else:
            print(code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)  # not this test process's clean-up


def run(tool: str, *args: str, check: bool = True,
        fresh: bool = False) -> subprocess.CompletedProcess:
    """Run console script `tool` to the end: forked (see `start`), or with fresh=True started
    afresh from the virtualenv's bin/."""
    if fresh:
        result = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True)
    else:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            _, status = os.waitpid(start(tool, args, out.fileno(), err.fileno()), 0)
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(
                [tool, *args], os.waitstatus_to_exitcode(status),
                out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} failed:\n{result.stderr[-3000:]}")
    return result


def output(result: subprocess.CompletedProcess) -> str:
    return result.stderr + result.stdout


def failed_train(data: Path, args: list[str], save_dir: Path) -> str:
    """Run fairseq-train expecting it to fail; the last line it printed (the error)."""
    result = run("fairseq-train", str(data), *args, "--save-dir", str(save_dir), check=False)
    assert result.returncode != 0, "fairseq-train should have stopped"
    return result.stderr.strip().splitlines()[-1]


def exits_with(main, argv: list[str]) -> str:
    """The message a console script's `cli_main` stops with, run in this process (one process
    start fewer per bad input; a test through `run` shows such a message reaches stderr)."""
    try:
        main(argv)
    except SystemExit as stop:
        assert stop.code not in (None, 0), f"{argv} exited successfully"
        return str(stop.code)
    raise AssertionError(f"{argv} did not stop")


def setup_error(data: Path, args: list[str]) -> str:
    """The ValueError fairseq-train's set-up (task, model, criterion, optimizer) raises for
    these arguments, built in this process as fairseq-train builds them (one process start
    instead of one per bad option; `failed_train` shows such a message reaches the user)."""
    from fairseq import optim, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, [str(data), *args]))
    try:
        task = tasks.setup_task(cfg.task)
        model = task.build_model(cfg.model)
        task.build_criterion(cfg.criterion)
        optim.build_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    except ValueError as e:
        return str(e)
    raise AssertionError(f"fairseq-train's set-up accepted {args}")


def train_args(data: Path, run_dir: Path, args: list[str], max_update: int) -> list[str]:
    """fairseq-train's arguments to train into run_dir/checkpoints and run_dir/tensorboard."""
    return [str(data), *args, "--max-update", str(max_update),
            "--save-dir", str(run_dir / "checkpoints"),
            "--tensorboard-logdir", str(run_dir / "tensorboard")]


def train(data: Path, run_dir: Path, args: list[str], max_update: int,
          fresh: bool = False) -> subprocess.CompletedProcess:
    """fairseq-train into run_dir (resumes from its checkpoint_last.pt if there)."""
    return run("fairseq-train", *train_args(data, run_dir, args, max_update), fresh=fresh)


def train_killed(data: Path, run_dir: Path, args: list[str], max_update: int,
                 saved_at: int) -> str:
    """fairseq-train into run_dir, killed with SIGKILL (no clean shutdown, as a crash or a
    cluster pre-emption) as soon as it reports the checkpoint of update `saved_at` written;
    what it printed. Deterministic when `saved_at` is a multiple of --save-interval-updates."""
    read, write = os.pipe()
    pid = start("fairseq-train", tuple(train_args(data, run_dir, args, max_update)), write, write)
    os.close(write)
    lines = []
    with open(read, encoding="utf-8", errors="replace") as printed:
        for line in printed:
            lines.append(line)
            if "Saved checkpoint" in line and f"@ {saved_at} updates" in line:
                os.kill(pid, signal.SIGKILL)
                break
    _, status = os.waitpid(pid, 0)
    log = "".join(lines)
    assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL, (
        f"fairseq-train was not killed:\n{log[-3000:]}")
    return log


def straight_and_resumed(data: Path, tmp_path_factory, args: list[str], updates: int,
                         resume_args: tuple[str, ...] = (), fresh: bool = False):
    """`updates` updates straight (started afresh with fresh=True, see `run`), and updates/2 +
    resume from checkpoint_last.pt + the rest: (straight run dir, split run dir,
    {"straight": log, "resumed": log})."""
    straight, split = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("split")
    logs = {"straight": train(data, straight, args, updates, fresh)}
    train(data, split, args, updates // 2)
    logs["resumed"] = train(data, split, [*args, *resume_args], updates)
    return straight, split, logs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker, out: Path, world_size: int = 2) -> Path:
    """Run worker(rank, port, out_dir) in world_size processes that meet on a free loopback
    port (torch.distributed over gloo); returns out, where the workers write."""
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=world_size)
    return out


def launch_ranks(data: Path, run_dir: Path, args: list[str], max_update: int,
                 world_size: int = 2, every_rank: bool = True) -> tuple[list, list[Path]]:
    """Start fairseq-train as `world_size` processes on this CPU, launched as the README
    says (gloo, one explicit rank per process); (their processes, their log files).
    every_rank: rank r trains into run_dir/rank{r} and every rank checkpoints (see
    fairseq_train_every_rank.py); otherwise all train into run_dir, as a user would, and
    rank r logs to run_dir/log{r}.txt."""
    port = free_port()
    procs, logs = [], []
    for rank in range(world_size):
        rank_dir = run_dir / f"rank{rank}" if every_rank else run_dir
        (rank_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        logs.append(rank_dir / "log.txt" if every_rank else run_dir / f"log{rank}.txt")
        command = [
            *([sys.executable, EVERY_RANK] if every_rank else [str(BIN / "fairseq-train")]),
            *train_args(data, rank_dir, args, max_update),
            "--ddp-backend", "legacy_ddp", "--distributed-backend", "gloo",
            "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn",
            "--distributed-world-size", str(world_size), "--distributed-rank", str(rank),
        ]
        with open(logs[-1], "w") as log:  # files, not pipes: no rank blocks on a full pipe
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    return procs, logs


def train_data_parallel(data: Path, run_dir: Path, args: list[str], max_update: int,
                        world_size: int = 2, every_rank: bool = True) -> list[str]:
    """fairseq-train as `launch_ranks` starts it, to the end; the ranks' logs."""
    procs, logs = launch_ranks(data, run_dir, args, max_update, world_size, every_rank)
    deadline = time.monotonic() + 900
    while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
        if any(proc.poll() for proc in procs):  # one failed: the others would wait on it
            break
        time.sleep(0.5)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    texts = [log.read_text() for log in logs]
    for rank, (proc, text) in enumerate(zip(procs, texts)):
        if proc.returncode != 0:
            raise AssertionError(f"rank {rank} failed:\n{text[-3000:]}")
    return texts


def checkpoint(run_dir: Path, name: str = "checkpoint_last.pt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)


def assert_same_model(run_a: Path, run_b: Path) -> list[str]:
    """Assert the two runs' last checkpoints hold bit-identical weights; their names."""
    a, b = checkpoint(run_a)["model"], checkpoint(run_b)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    return list(a)


def scalar_tags(run_dir: Path) -> set[str]:
    """Every "{subset}/{name}" scalar written to run_dir/tensorboard."""
    tags = set()
    for sub in (run_dir / "tensorboard").iterdir():
        events = EventAccumulator(str(sub))
        events.Reload()
        tags |= {f"{sub.name}/{t}" for t in events.Tags()["scalars"]}
    return tags
