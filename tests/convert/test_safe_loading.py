"""The project's one checkpoint reader and fairseq's checkpoint I/O routed through it: bad
files get a message naming the reason, fairseq's loader is the safe one, and fairseq's
checkpoint copies are atomic (an interrupted copy leaves the previous file intact)."""

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager

from omoe_plugin.convert import fairseq_io
from omoe_plugin.convert.safe_read import read_checkpoint


@pytest.mark.parametrize("content,message", (
    (b"", r"not a torch checkpoint: neither a zip archive nor a pickle \(it is empty\)"),
    (b"hello\n", r"not a torch checkpoint: .* \(it starts with b'hello\\n': a text file\?\)"),
    (b"PK\x03\x04 cut short", "not a readable torch checkpoint"),
    (None, "holds a Tensor, not a checkpoint dict"),
))
def test_read_checkpoint_names_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save(torch.zeros(2), path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_checkpoint(path)


def test_fairseq_reads_checkpoints_through_the_safe_loader(tmp_path):
    assert checkpoint_utils.load_checkpoint_to_cpu is fairseq_io.load_checkpoint_to_cpu  # register()
    path = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="no 'model' state dict"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    history = [{"optimizer_name": "o", "lr_scheduler_state": {}, "num_updates": 3}]
    torch.save({"model": {"w": torch.ones(2)}, "cfg": {"model": {"_name": "x"}},
                "optimizer_history": history, "extra_state": {"train_iterator": {}}}, path)
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert state["cfg"].model._name == "x" and torch.equal(state["model"]["w"], torch.ones(2))


def test_an_interrupted_checkpoint_copy_leaves_the_previous_file(tmp_path, monkeypatch):
    src, dst = tmp_path / "checkpoint_1_8.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old")
    assert PathManager.copy(str(src), str(dst), overwrite=True)  # fairseq's call
    assert dst.read_bytes() == src.read_bytes()

    def killed_midway(a, b):
        with open(b, "wb") as f:
            f.write(open(a, "rb").read()[:100])
        raise KeyboardInterrupt  # the job dies halfway through the copy

    dst.write_bytes(b"old")
    monkeypatch.setattr(fairseq_io.shutil, "copyfile", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dst.name, src.name])
    assert not PathManager.copy(str(src), str(dst))  # no overwrite asked: left alone
