"""End to end, the converged comparison (scripts/compare_optimizers.py) on a tiny setting: a
selection run killed with SIGKILL just after a validation that did not improve, then the
same command again, ends with exactly one record, equal to that of an uninterrupted run
(early stopping's count survives the resume); the final run of seed 1 reuses it and scores
the test split once."""

import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fairseq.data import data_utils

from omoe_plugin.convert.safe_read import read_checkpoint
from omoe_plugin.data.cli import cli_main as prepare_main
from omoe_plugin.data.movie_reviews import parse
from omoe_plugin.data.sources import rated_lines
from tests.cli import USER_DIR, exits_with, train
from tests.data.test_prepare import write_tsv

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_optimizers.py"
# a MoE of 2 layers of width 64 (the scratch setting made smaller)
SHAPE = ["--encoder-layers", "2", "--encoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128",
         "--encoder-attention-heads", "2"]
# MoE + OMoE from the start checkpoint; patience 2 validations, at most 6 epochs; batches
# grouped by length, new ones every epoch (a resumed run must rebuild those of its epoch)
TINY = ["--corpus", "movie_reviews", "--setting", "scratch", "--configs", "moe_omoe",
        "--lr-grid", "1e-3", "--protocol", "2", "6", *SHAPE, "--batch-size", "8",
        "--log-interval", "1", "--omoe-accumulate-steps", "3", "--omoe-orthogonal-steps", "3",
        "--omoe-group-by-length"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """150 positive and 150 negative real movie-review sentences, split 80/10/10 by
    omoe-prepare-data."""
    root = tmp_path_factory.mktemp("reviews")
    reviews = parse(rated_lines())
    rows = [{"text": r.text, "label": label} for label, sign in (("pos", 1), ("neg", -1))
            for r in [r for r in reviews if r.rating * sign > 0][:150]]
    write_tsv(root / "reviews.tsv", rows)
    prepare_main([str(root / "data"), "--input", str(root / "reviews.tsv")])
    return root / "data"


@pytest.fixture(scope="module")
def start(data, tmp_path_factory) -> Path:
    """A start checkpoint of that model (one update of AdamW), to fine-tune from as the
    pretrained setting fine-tunes from the upcycled encoder."""
    run_dir = tmp_path_factory.mktemp("start")
    train(data, run_dir, [
        "--user-dir", USER_DIR, "--task", "omoe_sentence_prediction", "--criterion",
        "omoe_sentence_prediction", "--num-classes", "2", "--init-token", "0",
        "--max-positions", "128", "--cpu", "--num-workers", "0", "--arch", "omoe_roberta_tiny",
        *SHAPE, "--moe-experts", "4", "--moe-top-k", "1", "--optimizer", "adam", "--lr", "1e-3",
        "--batch-size", "8", "--disable-validation"], 1)
    return run_dir / "checkpoints" / "checkpoint_last.pt"


def command(data: Path, start: Path, out: Path, *args: str) -> list[str]:
    """The comparison's command line on that data and model, from that start, into out."""
    return [sys.executable, str(SCRIPT), "--data", str(data), "--out", str(out / "runs"),
            "--records", str(out / "records.jsonl"), *TINY, "--finetune-from-model", str(start),
            *args]


def load_script():
    """scripts/compare_optimizers.py as a module."""
    spec = importlib.util.spec_from_file_location("compare_optimizers", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def run_dir(out: Path) -> Path:
    [found] = (out / "runs" / "moe_omoe").glob("lr0.001_seed1_*")
    return found


def records(out: Path) -> list[dict]:
    path = out / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def kill_after_a_worse_validation(cmd: list[str], out: Path) -> int:
    """Run the comparison and SIGKILL it (and its fairseq-train) as soon as a checkpoint is
    saved at or after the first validation that did not improve on the best (early
    stopping's count is then above 0); the update of the last checkpoint saved."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline, log = time.monotonic() + 180, ""
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            logs = list((out / "runs").glob("*/*/train.log"))
            log = logs[0].read_text() if logs else ""
            scores = [(float(a), int(n)) for a, n in re.findall(
                r"valid on 'valid' subset \|.*?\| accuracy ([\d.]+) \|.*?num_updates (\d+)", log)]
            worse = [n for i, (a, n) in enumerate(scores)
                     if i and a <= max(s for s, _ in scores[:i])]
            if worse and any(int(n) >= worse[0] for n in saved(log)):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return max(saved(logs[0].read_text()))
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no worse validation to kill after (exit {proc.returncode}):\n{log}")


def saved(log: str) -> list[int]:
    """The updates of every checkpoint a fairseq-train log reports saved."""
    return [int(n) for n in re.findall(r"Saved checkpoint .*? @ (\d+) updates", log)]


@pytest.fixture(scope="module")
def runs(data, start, tmp_path_factory):
    """The selection run uninterrupted, and the same run killed and run again, side by
    side: (straight out, killed out, update resumed from, run.json and records after the
    kill)."""
    straight, killed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("killed")
    uninterrupted = subprocess.Popen(command(data, start, straight, "--select"),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_at = kill_after_a_worse_validation(command(data, start, killed, "--select"), killed)
    after_kill = json.loads((run_dir(killed) / "run.json").read_text()), records(killed)
    resumed = subprocess.run(command(data, start, killed, "--select"), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = uninterrupted.communicate()[0]
    assert uninterrupted.returncode == 0, output[-3000:]
    return straight, killed, killed_at, after_kill


def test_a_killed_run_resumes_to_one_record_equal_to_an_uninterrupted_one(runs, data):
    straight, killed, killed_at, (state_after_kill, records_after_kill) = runs
    assert records_after_kill == [] and not state_after_kill["trained"]  # killed mid-run
    assert len(state_after_kill["seconds"]) == 1
    first, second = (run_dir(killed) / "train.log").read_text().split("=== segment 2")
    assert "loading pretrained model from" in first  # --finetune-from-model: the start
    # the same command again: fairseq resumed where it died, ignoring --finetune-from-model
    assert "loading pretrained model from" not in second
    assert re.search(rf"checkpoint_last.pt \(epoch \d+ @ {killed_at} updates\)", second)
    assert "early stop" in (run_dir(straight) / "train.log").read_text()  # patience ended it
    [a], [b] = records(straight), records(killed)
    assert b["stage"] == "select" and b["test"] is None and b["seed"] == 1 and b["lr"] == 1e-3
    for key in ("updates", "best_updates", "valid", "epochs", "options", "protocol", "curve"):
        assert a[key] == b[key], key
    assert killed_at < b["updates"]
    # every validation once, across the kill, in order, the best of them the record's
    assert [n for n, _ in b["curve"]] == sorted({n for n, _ in b["curve"]})
    assert killed_at in [n for n, _ in b["curve"]] and b["curve"][-1][0] == b["updates"]
    assert max(s for _, s in b["curve"]) == b["valid"]
    for key in ("cka", "cos", "delta", "room"):  # of checkpoint_best.pt, from the start
        assert abs(a[key] - b[key]) < 1e-6, key
    state = json.loads((run_dir(killed) / "run.json").read_text())
    assert len(state["seconds"]) == 2 and b["wall_s"] == round(sum(state["seconds"]), 1) > 0
    train = len(data_utils.load_indexed_dataset(str(data / "input0" / "train")))
    per_epoch = math.ceil(train / 8)
    assert b["protocol"] == {"patience": 2, "max_epoch": 6, "updates_per_epoch": per_epoch,
                             "validate_interval": math.ceil(per_epoch / 4),
                             "group_by_length": True}
    assert b["updates"] < 6 * per_epoch and b["epochs"] == round(b["updates"] / per_epoch, 2)
    assert b["options"][b["options"].index("--total-num-update") + 1] == str(6 * per_epoch)
    assert "user_dir" in b["options"] and str(data) not in b["options"]
    assert a["majority"] == b["majority"] and set(b["majority"]) == {"valid", "test"}
    assert all(50 <= share < 100 for share in b["majority"].values())  # two classes


def test_the_final_runs_are_refused_while_a_selection_is_incomplete(runs, data, start,
                                                                     monkeypatch):
    _, killed, _, _ = runs
    script = load_script()
    monkeypatch.chdir(Path.cwd())  # the script works from the repository: back after the test
    argv = command(data, start, killed, "--seeds", "2", "--lr-grid", "1e-3", "3e-3")[2:]
    message = exits_with(script.main, argv)
    assert "refusing the final runs" in message and "'MoE + OMoE' on movie_reviews" in message
    assert "no selection run yet at lr 0.003" in message
    assert not [r for r in records(killed) if r["seed"] == 2]  # nothing trained
    assert not list((killed / "runs").glob("*/*seed2*"))


def test_the_final_run_of_seed_1_reuses_the_selection_run_and_scores_test_once(runs, data,
                                                                             start):
    _, killed, _, _ = runs
    final = subprocess.run(command(data, start, killed, "--seeds", "1"), capture_output=True,
                           text=True)
    assert final.returncode == 0, final.stderr[-3000:]
    select, last = records(killed)
    assert last["stage"] == "final" and 0 <= last["test"] <= 100
    for key in ("updates", "best_updates", "valid", "wall_s", "cka", "cos", "options", "curve"):
        assert select[key] == last[key], key
    state = json.loads((run_dir(killed) / "run.json").read_text())
    assert len(state["seconds"]) == 2  # not trained again
    assert [p.name for p in (run_dir(killed) / "checkpoints").iterdir()] == ["checkpoint_best.pt"]
    kept = read_checkpoint(run_dir(killed) / "checkpoints" / "checkpoint_best.pt")
    assert "last_optimizer_state" not in kept and kept["model"]  # scored on test above


def test_until_is_the_next_such_time_of_day(capsys):
    script = load_script()
    now = datetime.now()
    ahead, behind = ((now + timedelta(minutes=m)).strftime("%H:%M") for m in (2, -2))
    assert 0 < script.clock(ahead) - time.time() <= 180
    assert 86400 - 180 <= script.clock(behind) - time.time() < 86400  # tomorrow's
    assert exits_with(script.main, ["--all", "--until", "25:00"]) == "2"
    assert "'25:00' is not a time of day as HH:MM" in capsys.readouterr().err
    assert exits_with(script.main, ["--all", "--fill"]) == "2"
    assert "--fill goes with --until" in capsys.readouterr().err
