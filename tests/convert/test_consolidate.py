"""Checkpoints of expert-parallel runs (`omoe-consolidate`, `convert/consolidate.py`): a real
checkpoint of a tiny omoe_roberta model with its OMoE (statistics and projector factors) or
AdamW state, cut into 2 and 4 shard files, joins back bit for bit; the shards are what the
rank-r model loads; the shards that 2 gloo workers of sharded OMoE save join into the
single-process optimizer state; omoe-export and omoe-analyze read a shard as the whole
model; bad sets of shards are refused with one clear line."""

import dataclasses
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from omoe_plugin.convert.checkpoint import load_encoder_checkpoint
from omoe_plugin.convert.consolidate import (join_shards, read_shards, reshard, shard_paths,
                                             split_whole)
from omoe_plugin.convert.consolidate_cli import cli_main
from omoe_plugin.export.classifier import load_classifier
from omoe_plugin.models import OMoERobertaConfig, OMoERobertaModel
from omoe_plugin.models.encoder import OMoEEncoder
from omoe_plugin.moe import ExpertParallel
from omoe_plugin.optim import OMoE
from omoe_plugin.optim.fairseq_omoe import FairseqOMoE, OMoEConfig
from omoe_plugin.tasks.omoe_sentence_prediction import (
    OMoESentencePredictionConfig,
    OMoESentencePredictionTask,
)
from tests.cli import exits_with, run
from tests.conftest import HEAD, dictionaries, tiny_model
from tests.convert.expert_parallel_layer import SETTINGS, layer_worker, train_layer
from tests.criterions.test_omoe_sentence_prediction import criterion, sample

EXPERTS = 4  # tiny_model's
UPDATES = 3  # two accumulating OMoE updates, then an orthogonal one: projectors formed


def words_and_labels():
    """The conftest dictionaries, the words with the <mask> symbol fairseq's sentence
    prediction task adds when it loads a data directory's dictionary."""
    words, labels = dictionaries()
    words.add_symbol("<mask>")
    return words, labels


def omoe_task() -> OMoESentencePredictionTask:
    return OMoESentencePredictionTask(OMoESentencePredictionConfig(num_classes=2),
                                      *words_and_labels())


def checkpoint(model, optimizer_state: dict, data: Path) -> dict:
    """What fairseq-train saves for `model` (its config as a plain dict)."""
    model_cfg = {k: v for k, v in dataclasses.asdict(model.cfg).items() if k != "_name"}
    return {
        "args": None,
        "cfg": {"model": {"_name": "omoe_roberta", **model_cfg},
                "task": {"_name": "omoe_sentence_prediction", "data": str(data)}},
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "OMoESentencePredictionCriterion",
                               "optimizer_name": "FairseqOMoE", "lr_scheduler_state": {},
                               "num_updates": UPDATES}],
        "last_optimizer_state": optimizer_state,
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": UPDATES,
                                           "version": 2}},
    }


def trained_omoe(task):
    """A tiny model and its FairseqOMoE (inputs space) after UPDATES task updates."""
    model = tiny_model(task).train()
    optimizer = FairseqOMoE(OMoEConfig(lr=[0.01], omoe_space="inputs", omoe_stat="tokens",
                                       omoe_accumulate_steps=2, omoe_orthogonal_steps=2),
                            list(model.parameters()))
    loss_of = criterion(task)
    for update in range(UPDATES):
        optimizer.zero_grad()
        task.train_step(sample(task, seed=update), model, loss_of, optimizer, update_num=update)
        task.optimizer_step(optimizer, model, update_num=update)
    return model, optimizer


def trained_adamw(task):
    """A tiny model and a plain torch AdamW (FairseqAdam's layout) after UPDATES updates."""
    model = tiny_model(task).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    loss_of = criterion(task)
    for update in range(UPDATES):
        optimizer.zero_grad()
        loss_of(model, sample(task, seed=update))[0].backward()
        optimizer.step()
    return model, optimizer


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A data directory as load_classifier reads it: dictionaries and a tokenizer file."""
    from tests.conftest import word_tokenizer

    out = tmp_path_factory.mktemp("data")
    words, labels = words_and_labels()
    for name, dictionary in (("input0", words), ("label", labels)):
        (out / name).mkdir()
        dictionary.save(str(out / name / "dict.txt"))
    (out / "tokenizer.json").write_text(word_tokenizer(words.symbols).to_text())
    return out


@pytest.fixture(scope="module", params=["omoe", "adamw"])
def whole(request, data):
    """(the whole checkpoint, its task) of a model trained with OMoE or AdamW."""
    task = omoe_task()
    model, optimizer = (trained_omoe if request.param == "omoe" else trained_adamw)(task)
    state = checkpoint(model, optimizer.state_dict(), data)
    if request.param == "omoe":
        omoe = state["last_optimizer_state"]["omoe"]
        assert omoe["factors"] and all(s.any() for s in omoe["stats"].values())
    return state, task


def write(states: list[dict], directory: Path, name: str = "checkpoint_best") -> list[Path]:
    """torch.save the shards as the run's ranks name them."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}-expert{r}of{len(states)}.pt" for r in range(len(states))]
    for state, path in zip(states, paths):
        torch.save(state, path)
    return paths


def assert_identical(a, b, where: str = "") -> None:
    """a == b, tensors bit for bit (dtype and shape included), through containers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def sharded_model(cfg: dict, task, rank: int, size: int) -> OMoERobertaModel:
    """Rank `rank`'s model under expert parallelism over `size` workers (its E/size experts)."""
    config = OMoERobertaConfig(**{k: v for k, v in cfg.items() if k != "_name"})
    parallel = ExpertParallel(None, size, rank, None)  # no communication: only built, loaded
    model = OMoERobertaModel(config, OMoEEncoder(config, task.source_dictionary, parallel))
    model.register_classification_head(HEAD, num_classes=2)
    return model


@pytest.mark.parametrize("size", [2, 4])
def test_shards_join_back_bit_for_bit_and_each_is_its_ranks_model(whole, tmp_path, size):
    state, task = whole
    shards = split_whole(state, size)
    paths = write(shards, tmp_path)
    assert shard_paths(paths[-1]) == paths
    joined = read_shards(paths[1])[0]
    assert joined["cfg"]["model"]["moe_expert_parallel_size"] == 1
    assert_identical(joined, state)
    share = EXPERTS // size
    for rank, path in enumerate(paths):
        shard = torch.load(path, weights_only=True)
        assert shard["cfg"]["model"]["moe_expert_parallel_size"] == size
        rows = slice(rank * share, (rank + 1) * share)
        for key, value in state["model"].items():
            expected = value[rows] if ".experts." in key else value
            assert torch.equal(shard["model"][key], expected), key
        sharded_model(state["cfg"]["model"], task, rank, size).load_state_dict(shard["model"])
        optimizer, whole_optimizer = shard["last_optimizer_state"], state["last_optimizer_state"]
        assert optimizer["param_groups"] == whole_optimizer["param_groups"]
        keys = list(state["model"])
        origin = whole_optimizer.get("omoe", {}).get("origin", range(len(keys)))
        for index, entry in whole_optimizer["state"].items():  # the experts' moments sliced
            expected = entry["exp_avg"][rows] if ".experts." in keys[origin[index]] \
                else entry["exp_avg"]
            assert torch.equal(optimizer["state"][index]["exp_avg"], expected)
        if "omoe" in optimizer:
            omoe, whole_omoe = optimizer["omoe"], whole_optimizer["omoe"]
            for key, stats in whole_omoe["stats"].items():
                assert torch.equal(omoe["stats"][key], stats[rows])
                assert torch.equal(omoe["stat_steps"][key], whole_omoe["stat_steps"][key][rows])
            assert_identical(omoe["factors"], whole_omoe["factors"])


def test_shards_reshard_for_another_size_exactly(whole):
    state, _ = whole
    assert_identical(join_shards(split_whole(join_shards(split_whole(state, 4)), 2)), state)
    assert_identical(reshard(split_whole(state, 4), 2), split_whole(state, 2))


def test_the_cli_writes_the_whole_checkpoint_and_shards_for_another_size(whole, tmp_path,
                                                                         capsys):
    state, _ = whole
    paths = write(split_whole(state, 2), tmp_path / "run")
    cli_main([str(paths[0])])
    whole_path = tmp_path / "run" / "checkpoint_best.pt"
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {whole_path} (2 -> 1 expert-parallel shard(s), optimizer state kept)"]
    assert_identical(torch.load(whole_path, weights_only=True), state)

    out = tmp_path / "four" / "resume.pt"
    cli_main([str(paths[1]), "--out", str(out), "--expert-parallel-size", "4"])
    written = [out.with_name(f"resume-expert{r}of4.pt") for r in range(4)]
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {p} (2 -> 4 expert-parallel shard(s), optimizer state kept)" for p in written]
    assert sorted(out.parent.iterdir()) == written  # no temporary file left
    for path, expected in zip(written, split_whole(state, 4)):
        assert_identical(torch.load(path, weights_only=True), expected)


def test_a_consolidated_checkpoint_resumes_a_single_process_model_and_optimizer(tmp_path):
    task = omoe_task()
    model, optimizer = trained_omoe(task)
    state = checkpoint(model, optimizer.state_dict(), tmp_path)
    paths = write(split_whole(state, 2), tmp_path)
    cli_main([str(paths[0]), "--out", str(tmp_path / "whole.pt")])
    joined = torch.load(tmp_path / "whole.pt", weights_only=True)
    resumed, _ = trained_omoe(task)  # other weights, other optimizer state: both replaced
    fields = {k: v for k, v in joined["cfg"]["model"].items() if k != "_name"}
    assert OMoERobertaConfig(**fields).moe_expert_parallel_size == 1
    resumed.load_state_dict(joined["model"])
    fresh = FairseqOMoE(OMoEConfig(lr=[0.01], omoe_space="inputs", omoe_stat="tokens",
                                   omoe_accumulate_steps=2, omoe_orthogonal_steps=2),
                        list(resumed.parameters()))
    fresh.load_state_dict(joined["last_optimizer_state"])
    for model_, optimizer_ in ((model, optimizer), (resumed, fresh)):  # one more update each
        optimizer_.zero_grad()
        task.train_step(sample(task, seed=9), model_, criterion(task), optimizer_, update_num=3)
        task.optimizer_step(optimizer_, model_, update_num=3)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_export_and_analysis_read_a_shard_as_the_whole_model(whole, data, tmp_path):
    state, _ = whole
    torch.save(state, tmp_path / "whole.pt")
    paths = write(split_whole(state, 2), tmp_path)
    cfg, weights = load_encoder_checkpoint(paths[1])  # what omoe-analyze and omoe-upcycle read
    assert cfg == load_encoder_checkpoint(tmp_path / "whole.pt")[0]
    assert cfg.moe_expert_parallel_size == 1
    assert_identical(weights, state["model"])
    tokenizer = data / "tokenizer.json"
    model, info = load_classifier(paths[0], tokenizer=tokenizer)  # what omoe-export exports
    whole_model, whole_info = load_classifier(tmp_path / "whole.pt", tokenizer=tokenizer)
    assert_identical(model.state_dict(), whole_model.state_dict())
    assert dataclasses.replace(info, source="") == dataclasses.replace(whole_info, source="")


def test_optimizer_state_that_cannot_be_mapped_is_left_out_with_a_warning(whole, caplog):
    state, _ = whole
    flat = torch.cat([v.reshape(-1) for v in state["model"].values()])  # fp16's flat fp32 copy
    flattened = {**state, "last_optimizer_state": {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": flat, "exp_avg_sq": flat}},
        "param_groups": [{"lr": 0.01, "params": [0]}], "loss_scale": 128.0}}
    shards = split_whole(flattened, 2)
    assert all(s["last_optimizer_state"] is None for s in shards)
    assert "a flattened --fp16 state" in caplog.text and "--reset-optimizer" in caplog.text
    assert_identical(join_shards(shards)["model"], state["model"])

    shards = split_whole(state, 2)
    moment = shards[1]["last_optimizer_state"]["state"][0]["exp_avg"]
    shards[1]["last_optimizer_state"]["state"][0] = {
        **shards[1]["last_optimizer_state"]["state"][0], "exp_avg": moment + 1}
    assert join_shards(shards)["last_optimizer_state"] is None
    assert "exp_avg of encoder.embed_tokens.weight differs between shards 0 and 1" in caplog.text


def test_bad_sets_of_shards_are_refused_with_a_clear_line(whole, tmp_path):
    state, _ = whole
    paths = write(split_whole(state, 4), tmp_path / "run")
    paths[1].unlink()
    paths[3].unlink()
    message = exits_with(cli_main, [str(paths[0])])
    assert message.startswith("omoe-consolidate: ") and len(message.splitlines()) == 1
    assert f"2 of them are missing: {paths[1]}, {paths[3]}" in message

    lone = tmp_path / "checkpoint_last-expert0of2.pt"
    torch.save(split_whole(state, 2)[0], lone)
    with pytest.raises(FileNotFoundError, match="checkpoint_last-expert1of2.pt"):
        shard_paths(lone)
    with pytest.raises(ValueError, match="not an expert-parallel checkpoint shard"):
        shard_paths(tmp_path / "checkpoint_last.pt")

    other = {**state, "model": {k: v + 1 if k.endswith("layernorm_embedding.weight") else v
                                for k, v in state["model"].items()}}
    mixed = split_whole(state, 2)[:1] + split_whole(other, 2)[1:]
    paths = write(mixed, tmp_path / "mixed")
    message = exits_with(cli_main, [str(paths[0])])
    assert ("encoder.layernorm_embedding.weight differs between shards 0 and 1: not shards "
            "of one save") in message
    with pytest.raises(ValueError, match="not shards of one save"):
        load_encoder_checkpoint(paths[1])  # omoe-export and omoe-analyze say the same

    later = {**state, "optimizer_history": [{**state["optimizer_history"][0], "num_updates": 9}]}
    paths = write(split_whole(state, 2)[:1] + split_whole(later, 2)[1:], tmp_path / "later")
    assert "saved at different updates ([3, 9]" in exits_with(cli_main, [str(paths[0])])

    paths = write(split_whole(state, 2), tmp_path / "own")
    message = exits_with(cli_main, [str(paths[0]), "--expert-parallel-size", "2"])
    assert "would overwrite its own input" in message
    assert "--moe-experts (4) must be a multiple of --moe-expert-parallel-size (3)" in exits_with(
        cli_main, [str(paths[0]), "--out", str(tmp_path / "x.pt"), "--expert-parallel-size", "3"])
    assert not (tmp_path / "x-expert0of3.pt").exists()


def test_the_console_script_exits_1_with_one_line(tmp_path):
    result = run("omoe-consolidate", str(tmp_path / "checkpoint_last-expert0of2.pt"),
                 check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"omoe-consolidate: {tmp_path}/checkpoint_last-expert0of2.pt is one of 2 expert-parallel "
        f"shards, and 2 of them are missing: {tmp_path}/checkpoint_last-expert0of2.pt, "
        f"{tmp_path}/checkpoint_last-expert1of2.pt"]


def test_what_two_expert_parallel_workers_save_joins_into_the_single_process_state(tmp_path):
    from tests.cli import spawn_ranks

    spawn_ranks(layer_worker, tmp_path, 2)
    joined = read_shards(tmp_path / "checkpoint_last-expert1of2.pt")[0]
    single = train_layer()
    close = partial(torch.testing.assert_close, atol=1e-6, rtol=1e-5)
    close(joined["model"], single["model"])
    optimizer, expected = joined["last_optimizer_state"], single["last_optimizer_state"]
    close(optimizer["state"], expected["state"])
    assert optimizer["param_groups"] == expected["param_groups"]
    for part in ("stats", "stat_steps", "factors"):
        close(optimizer["omoe"][part], expected["omoe"][part])
    assert optimizer["omoe"]["counters"] == expected["omoe"]["counters"]
    params = [torch.nn.Parameter(v.clone()) for v in joined["model"].values()]
    OMoE(params, experts=[params[:2]], **SETTINGS).load_state_dict(optimizer)  # it resumes
