"""Generator of docs/options.md, the reference of every fairseq option the plugin adds, built from
the dataclasses that declare them: `python -m omoe_plugin.docs_options` writes the file,
`python -m omoe_plugin.docs_options --check` exits non-zero when it is stale.

Sources: `optim.settings.OMoESettings` (OMoE's settings: `--omoe-*`, with their valid values and
what changing them on resume does), the optimizer's fairseq config `optim.fairseq_omoe.OMoEConfig`
(its AdamW options), and every `moe_*` / `omoe_*` field of the model, criterion and task configs
the plugin registers with fairseq, grouped by the dataclass that declares them."""

import argparse
import dataclasses
import inspect
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "options.md"
COMMAND = "python -m omoe_plugin.docs_options"
PREFIXES = ("moe_", "omoe_")
# fairseq registry kind -> the command-line option that selects a component
SELECTORS = {"model": "--arch", "criterion": "--criterion", "task": "--task"}
KIND_ORDER = ("model", "criterion", "task")


class Component(NamedTuple):
    """A fairseq component of the plugin: its registry kind, the names that select it and its
    config dataclass."""

    kind: str
    names: tuple[str, ...]
    config: type


def flag(name: str) -> str:
    """The command-line option of a dataclass field: moe_top_k -> --moe-top-k."""
    return "--" + name.replace("_", "-")


def show(value: Any) -> str:
    """A default value as a table cell shows it."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(show(v) for v in value) + ")"
    return str(value)


def cell(text: str) -> str:
    """Text made safe for one markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def relative(path: str) -> str:
    """A source file's path relative to the repository."""
    return Path(path).resolve().relative_to(ROOT).as_posix()


def declaring_class(config: type, name: str) -> type:
    """The class in config's MRO whose own annotations declare field `name`."""
    for cls in config.__mro__:
        if name in cls.__dict__.get("__annotations__", {}):
            return cls
    return config


def plugin_components() -> list[Component]:
    """Every model, criterion and task the plugin registers with fairseq (registering it first),
    with the names that select it: a model's architectures, a criterion's or task's own name."""
    import omoe_plugin

    omoe_plugin.register()
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_DATACLASS_REGISTRY, MODEL_REGISTRY
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    def ours(config: Optional[type]) -> bool:
        return config is not None and config.__module__.startswith("omoe_plugin.")

    found = []
    for model, config in sorted(MODEL_DATACLASS_REGISTRY.items()):
        if ours(config):
            archs = sorted(a for a, cls in ARCH_MODEL_REGISTRY.items()
                           if cls is MODEL_REGISTRY[model])
            found.append(Component("model", tuple(archs), config))
    for kind, registry in (("criterion", CRITERION_DATACLASS_REGISTRY),
                           ("task", TASK_DATACLASS_REGISTRY)):
        found += [Component(kind, (name,), config)
                  for name, config in sorted(registry.items()) if ours(config)]
    return found


def moe_fields(config: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass named moe_* or omoe_*, in declaration order."""
    return [f for f in dataclasses.fields(config) if f.name.startswith(PREFIXES)]


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (its factory's value for a default_factory)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return "(required)"


def row(f: dataclasses.Field) -> str:
    """A fairseq config field as a table row: option, default, help."""
    help_text = cell(f.metadata.get("help", ""))
    return f"| `{flag(f.name)}` | {cell(show(default_of(f)))} | {help_text} |"


def optimizer_section() -> list[str]:
    """`--optimizer omoe`: the AdamW options of OMoEConfig, then every OMoESettings field."""
    from omoe_plugin.optim.fairseq_omoe import OMoEConfig
    from omoe_plugin.optim.settings import OMoESettings, option

    derived = {"omoe_" + f.name for f in dataclasses.fields(OMoESettings)}
    base = [f for f in dataclasses.fields(OMoEConfig)
            if f.name not in derived and f.name != "lr" and not f.name.startswith("_")]
    settings_file = relative(inspect.getsourcefile(OMoESettings))
    config_file = relative(inspect.getsourcefile(sys.modules[OMoEConfig.__module__]))
    lines = [
        "## Optimizer: `--optimizer omoe`",
        "",
        f"Declared in `{settings_file}` (`OMoESettings`, the `--omoe-*` settings) and "
        f"`{config_file}` (`OMoEConfig`, the fairseq options, which add AdamW's). The learning "
        "rate is fairseq's `--lr`. Each setting is also the keyword argument of "
        "`omoe_plugin.optim.OMoE` that its field names (`--omoe-max-gain` → `max_gain=`); "
        "what the settings do: [algorithm.md](algorithm.md).",
        "",
        "### AdamW base",
        "",
        "| option | default | meaning |",
        "|---|---|---|",
    ]
    lines += [row(f) for f in base]
    lines += [
        "",
        "### OMoE settings",
        "",
        "*Values*: what the option accepts (the first of a list is the default). *On resume*: "
        "what a value other than the checkpoint's does when a run resumes (it is logged); a "
        "change that no longer fits the checkpointed state then stops the run with a message "
        "naming `--reset-optimizer`.",
        "",
        "| option | default | values | meaning | on resume |",
        "|---|---|---|---|---|",
    ]
    for f in dataclasses.fields(OMoESettings):
        values = (", ".join(f"`{c}`" for c in f.metadata["choices"]) if f.metadata["choices"]
                  else cell(f.metadata["rule"]))
        lines.append(f"| `{option(f.name)}` | {cell(show(f.default))} | {values} | "
                     f"{cell(f.metadata['help'])} | {cell(f.metadata['on_resume'])} |")
    return lines + [""]


def component_sections(components: Sequence[Component]) -> list[str]:
    """One section per dataclass that declares moe_* / omoe_* fields, naming the components
    (and their selecting options) that take them."""
    groups: dict[type, tuple[dict[str, dataclasses.Field], list[Component]]] = {}
    for component in components:
        for f in moe_fields(component.config):
            owner = declaring_class(component.config, f.name)
            fields_, users = groups.setdefault(owner, ({}, []))
            fields_.setdefault(f.name, f)
            if component not in users:
                users.append(component)
    def first_kind(cls: type) -> tuple[int, str]:
        return min(KIND_ORDER.index(c.kind) for c in groups[cls][1]), cls.__name__

    order = sorted(groups, key=first_kind)
    titles = {"model": ("Model", "Model"), "criterion": ("Criterion", "Criteria"),
              "task": ("Task", "Tasks")}
    lines: list[str] = []
    for owner in order:
        fields_, users = groups[owner]
        kinds = sorted({c.kind for c in users}, key=KIND_ORDER.index)
        title = " and ".join(titles[k][sum(c.kind == k for c in users) > 1] for k in kinds)
        names = {kind: [n for c in users if c.kind == kind for n in c.names] for kind in kinds}
        selectors = "; ".join(f"`{SELECTORS[k]} {names[k][0]}`"
                              + "".join(f", `{n}`" for n in names[k][1:]) for k in kinds)
        lines += [
            f"## {title}: {selectors}",
            "",
            f"Declared in `{relative(inspect.getsourcefile(owner))}` (`{owner.__name__}`).",
            "",
            "| option | default | meaning |",
            "|---|---|---|",
        ]
        lines += [row(f) for f in fields_.values()]
        lines.append("")
    return lines


def render() -> str:
    """The markdown of docs/options.md."""
    components = plugin_components()
    lines = [
        "# Options reference",
        "",
        f"<!-- generated by `{COMMAND}` from the dataclasses named below: edit them, not this "
        "file -->",
        "",
        "Every fairseq option the plugin adds for OMoE and its MoE layers: the optimizer's "
        "settings and the `--moe-*` / `--omoe-*` options of its model, criteria and tasks. The "
        "model's shape, dropout and LayerNorm options are described with the model "
        "([usage/sentences.md](usage/sentences.md#the-model---arch-omoe_roberta_)); options such "
        "as `--lr` are fairseq's own. Regenerate with "
        f"`.venv/bin/{COMMAND}`; `make test` fails while this file is stale.",
        "",
        "Contents:",
        "",
    ]
    body = optimizer_section() + component_sections(components)
    for line in body:
        if line.startswith("## "):
            heading = line[3:]
            anchor = "".join(ch for ch in heading.lower() if ch.isalnum() or ch in " -_")
            lines.append(f"- [{heading}](#{anchor.replace(' ', '-')})")
    return "\n".join(lines + [""] + body).rstrip("\n") + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write docs/options.md, or with --check report whether it is up to date (exit 1 if not)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when docs/options.md is not what this "
                        "generates")
    parser.add_argument("--out", type=Path, default=OUTPUT, help="default: docs/options.md")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: regenerate it with `{COMMAND}`", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
