"""End to end, reliability: a fairseq-train --optimizer omoe run killed with SIGKILL in either
phase resumes from checkpoint_last.pt to the same parameters and OMoE state as an
uninterrupted run; every loader (fairseq-train resume and --restore-file, fairseq-validate,
omoe-upcycle, omoe-analyze) refuses a checkpoint carrying code without running it, and a
truncated or foreign file gets a message, not a traceback from inside torch."""

import pickle
import re

import pytest
import torch

from tests.cli import USER_DIR, checkpoint, output, run, train, train_killed

pytestmark = pytest.mark.slow

TASK = [
    "--user-dir", USER_DIR, "--task", "omoe_sentence_prediction", "--num-classes", "2",
    "--init-token", "0", "--max-positions", "128", "--cpu", "--num-workers", "0",
    "--criterion", "omoe_sentence_prediction",
]
# the input-space reading: the one with statistics to checkpoint, all-reduce and keep in fp32
OMOE = [
    *TASK, "--arch", "omoe_roberta_tiny", "--moe-experts", "4", "--moe-top-k", "1",
    "--optimizer", "omoe", "--omoe-space", "inputs", "--lr", "1e-3", "--omoe-accumulate-steps", "3",
    "--omoe-orthogonal-steps", "3", "--batch-size", "8", "--seed", "7",
    "--log-format", "simple", "--log-interval", "1", "--no-epoch-checkpoints",
    "--disable-validation", "--save-interval-updates", "4", "--keep-interval-updates", "1",
]
UPDATES = 12
KILLED_AT = (4, 8)  # after these checkpoints the next update is orthogonal, then accumulating


@pytest.fixture(scope="module")
def crashed(movie_reviews, tmp_path_factory):
    """12 updates straight; and the same run SIGKILLed after the checkpoint of update 4,
    resumed, killed after that of update 8, resumed to the end."""
    data = movie_reviews[0]
    straight, crashed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("crashed")
    train(data, straight, OMOE, UPDATES)
    logs = [train_killed(data, crashed, OMOE, UPDATES, saved_at=n) for n in KILLED_AT]
    logs.append(output(train(data, crashed, OMOE, UPDATES)))
    return straight, crashed, logs


def logged_phases(log: str) -> dict[int, str]:
    """num_updates -> omoe_phase of every train_inner line (--log-interval 1)."""
    return {int(n): phase for phase, n in re.findall(r"omoe_phase=([\d.]+),.*?num_updates=(\d+)", log)}


def test_the_kills_hit_both_phases_mid_phase(crashed):
    _, _, logs = crashed
    # the last update before each kill and the first after its resume are in the same phase:
    # orthogonal (1) at the first kill, accumulating (0) at the second
    for before, after, n, phase in zip(logs, logs[1:], KILLED_AT, ("1", "0")):
        assert logged_phases(before)[n] == logged_phases(after)[n + 1] == phase, n


def test_resume_after_sigkill_ends_like_an_uninterrupted_run(crashed):
    straight, killed, logs = crashed
    for log, n in zip(logs[1:], KILLED_AT):
        assert f"checkpoint_last.pt (epoch 1 @ {n} updates)" in log  # resumed where it died
    assert "omoe_skipped=0" in logs[-1] and "omoe_empty=0" in logs[-1]  # fault counters logged
    a, b = checkpoint(straight), checkpoint(killed)
    updates = [s["optimizer_history"][-1]["num_updates"] for s in (a, b)]
    assert updates == [UPDATES, UPDATES]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = a["last_optimizer_state"]["omoe"], b["last_optimizer_state"]["omoe"]
    assert sa["counters"] == sb["counters"] and sa["counters"]["projector_updates"] == 2
    for part in ("stats", "stat_steps", "factors"):
        assert sa[part].keys() == sb[part].keys() and sa[part]
        for key in sa[part]:
            assert torch.equal(sa[part][key], sb[part][key]), (part, key)
    for key, moment in a["last_optimizer_state"]["state"].items():  # AdamW moments too
        for name, value in moment.items():
            assert torch.equal(value, b["last_optimizer_state"]["state"][key][name]), (key, name)


class RunsCode:
    """A pickle payload: unpickling it creates `marker` (open(marker, "w"))."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def payload(tmp_path):
    """(a fairseq-shaped checkpoint carrying RunsCode, the marker it would create)."""
    marker = tmp_path / "payload-ran"
    pickle.loads(pickle.dumps(RunsCode(marker))).close()  # the payload is live ...
    assert marker.exists()
    marker.unlink()  # ... and the marker is gone before the loaders are tried
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": {"model": {"_name": "omoe_roberta"}},
                "optimizer_history": [], "extra_state": {"x": RunsCode(marker)}}, evil)
    return evil, marker


def loader_command(tool: str, evil, data, tmp_path) -> list[str]:
    train_args = [str(data), *OMOE, "--max-update", "1", "--save-dir", str(tmp_path / "ck")]
    if tool == "resume":  # the save dir's checkpoint_last.pt
        (tmp_path / "ck").mkdir()
        evil.rename(tmp_path / "ck" / "checkpoint_last.pt")
        return ["fairseq-train", *train_args]
    return {
        "restore-file": ["fairseq-train", *train_args, "--restore-file", str(evil)],
        "finetune": ["fairseq-train", *train_args, "--finetune-from-model", str(evil)],
        "validate": ["fairseq-validate", str(data), *TASK, "--batch-size", "8",
                     "--path", str(evil)],
        "upcycle": ["omoe-upcycle", str(evil), "--out", str(tmp_path / "moe.pt")],
        "analyze": ["omoe-analyze", str(evil), "--data", str(data)],
    }[tool]


@pytest.mark.parametrize(
    "tool", ("resume", "restore-file", "finetune", "validate", "upcycle", "analyze"))
def test_every_loader_refuses_a_code_carrying_checkpoint_without_running_it(
        movie_reviews, tmp_path, payload, tool):
    evil, marker = payload
    result = run(*loader_command(tool, evil, movie_reviews[0], tmp_path), check=False)
    assert result.returncode != 0
    assert not marker.exists(), "the checkpoint's code ran"
    assert "never unpickles" in output(result) and "could run code" in output(result)
    assert "torch/serialization.py" not in output(result)


def bad_file(kind: str, path):
    if kind == "truncated":  # as a job killed while copying it would leave it
        torch.save({"model": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "foreign":  # a torch file, but not a fairseq checkpoint
        torch.save({"weight": torch.zeros(3)}, path)
    else:  # not a torch file at all
        path.write_text("hello\n")


@pytest.mark.parametrize("kind,message", (
    ("truncated", "not a readable torch checkpoint (truncated"),
    ("foreign", "is not a fairseq checkpoint: it has no 'model' state dict"),
    ("text", "is not a torch checkpoint: neither a zip archive nor a pickle (it starts with "
             "b'hello\\n': a text file?)"),
))
def test_a_truncated_or_foreign_checkpoint_last_stops_with_a_message(movie_reviews, tmp_path,
                                                                     kind, message):
    (tmp_path / "ck").mkdir()
    bad_file(kind, tmp_path / "ck" / "checkpoint_last.pt")
    result = run("fairseq-train", str(movie_reviews[0]), *OMOE, "--max-update", "1",
                 "--save-dir", str(tmp_path / "ck"), check=False)
    assert result.returncode != 0
    assert message in output(result)
    assert "torch/serialization.py" not in output(result)
