"""Options that mean one thing in every command that has them: each is defined once here, with the
commands that have it, and the README's conventions table is rendered from these definitions.

A command takes a shared option as `SEED(detail)`: the help is the shared meaning followed by what
it is in that command, and the type (choices, checks) is the one shared instance. Names of
registered things (strategies, protocols, datasets, backbone kinds) are checked against their
registries when the command line is parsed, so a typo exits 2 before any file is opened; names
registered after import (new strategies) are valid too. `tests/test_conventions.py` walks every
command and checks that each option name shared by two commands is one of these, and that the
table is true.

`python -m embedcache.cli.reference README.md` writes this table into the README as well.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

import click

from embedcache.cli.command import deprecated_alias, note
from embedcache.errors import ConfigError

START, END = "<!-- cli-conventions:start -->", "<!-- cli-conventions:end -->"


# ---------------------------------------------------------------------------------------------- types
class Registered(click.ParamType):
    """A name that a library registry resolves, checked as the command line is parsed. `check(name)`
    raises ConfigError (listing the known names and a close match) for a name it does not know."""

    def __init__(self, kind: str, check: Callable[[str], Any], metavar: str = "NAME"):
        self.name, self.check, self.metavar = kind, check, metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """The value as given, or the canonical spelling `check` returns (a strategy's options)."""
        try:
            canonical = self.check(value)
        except ConfigError as e:
            self.fail(e.message, param, ctx)
        return canonical if isinstance(canonical, str) else value

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.metavar


def _strategy(text: str) -> str:
    """A strategy with its options (`probcover:delta=0.3`), checked, in its canonical spelling."""
    from embedcache.strategies import parse_strategy

    return parse_strategy(text).text


def _protocol(name: str) -> None:
    from embedcache.protocols import get_protocol

    get_protocol(name)


def _dataset(name: str) -> None:
    from embedcache.datasets import DATASETS

    DATASETS.get(name)


def _backbone(spec: str) -> None:
    from embedcache.backbones import parse_backbone_spec

    parse_backbone_spec(spec)


class Device(click.ParamType):
    """auto, cpu, cuda or cuda:N; `gpu` (neighbors' old spelling) still means cuda, with a note."""

    name = "device"
    metavar = "[auto|cpu|cuda|cuda:N]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if value == "gpu":
            note("--device gpu is deprecated; it now reads --device cuda (or cuda:N for another GPU)")
            return "cuda"
        if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", str(value)):
            return value
        self.fail(f"{value!r}: expected auto, cpu, cuda or cuda:N", param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.metavar


class SeedList(click.ParamType):
    """Run seeds as numbers and ranges ("0-15", "1,11", "0-3,10") → a sorted tuple of distinct ints."""

    name = "seeds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        from embedcache.experiments import parse_seeds

        try:
            return SeedTuple(parse_seeds(str(value)), text=str(value))
        except ConfigError as e:
            self.fail(e.message, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "SEEDS"


class SeedTuple(tuple):
    """Parsed seeds that remember how they were written (`demo` reads a bare count the old way)."""

    def __new__(cls, seeds, text: str):
        self = super().__new__(cls, seeds)
        self.text = text
        return self


# ------------------------------------------------------------------------------------ shared options
@dataclasses.dataclass(frozen=True)
class Shared:
    """One option with one meaning wherever it appears. `meaning` is the table's text and the start of
    every command's help for it; `commands` are where the table says it is (a test checks both);
    `attrs` are click settings every command shares (flag, metavar); a command may set its own
    default, `required`, `multiple` and parameter name."""

    concept: str
    decls: tuple[str, ...]
    meaning: str  # a sentence; without a final period, a command's detail follows after a colon
    commands: tuple[str, ...]
    type: Any = None
    attrs: dict = dataclasses.field(default_factory=dict)

    @property
    def option(self) -> str:
        return self.decls[-1]

    def __call__(self, detail: str = "", name: str | None = None, **settings: Any) -> Callable:
        unknown = set(settings) - {"default", "show_default", "required", "multiple", "callback", "metavar"}
        if unknown:
            raise TypeError(f"{self.option}: a command may not change {sorted(unknown)} of a shared option")
        help_text = f"{self.meaning}{':' if detail and not self.meaning.endswith('.') else ''} {detail}".strip()
        attrs = {**self.attrs, **settings} if self.type is None else {"type": self.type, **self.attrs, **settings}
        return click.option(*self.decls, *([name] if name else []), help=help_text, **attrs)


#: What `--out` is, per command (the README's second table).
OUT_KINDS = {
    "al": "a runs folder with its own rules: one record per (strategy, seed); finished records are skipped, "
          "interrupted ones resumed, records of another configuration refused",
    "extract": "a cache file; --resume continues an interrupted one, --overwrite replaces a complete one once the "
               "new one is complete",
    "import": "a cache file; --overwrite replaces an existing one once the new one is complete",
    "merge": "a cache file; --overwrite replaces an existing one once the merged one is complete",
    "report": "an output folder",
    "separability": "an output folder",
    "neighbors": "an output folder",
    "demo": "an output folder; a rerun with the same sizes reuses its finished caches and runs",
    "datasets build-waterbirds": "an output folder",
    "datasets build-treeperson": "an output folder",
    "tsne": "a .png file, with its coordinates in the .csv beside it; --overwrite replaces both once both are "
            "written",
    "suggest": "a .csv or .parquet file (default: CSV on standard output), written whole under a temporary name "
               "and then renamed",
    "predict": "a .csv or .parquet file, written whole under a temporary name and then renamed",
    "export-label-studio": "a .json tasks file, written whole under a temporary name and then renamed",
}

RUNS = Shared(
    "Run inputs", ("--runs",), "Run records: .jsonl files or folders of them. Repeatable.",
    ("report", "repair", "tsne", "neighbors"), click.Path(path_type=Path), {"multiple": True})
SEEDS = Shared(
    "AL run seeds", ("--seeds",), "Seeds of the AL runs, one run per strategy and seed: 0-15, 1,11 or 0-3,10.",
    ("al", "demo"), SeedList())
INIT_SEED = Shared(
    "Random-init weights", ("--init-seed",), "Seed of the random init for --weights random (the non-pretrained "
    "control).", ("extract", "al"), click.INT)
SEED = Shared(
    "The command's own random draws", ("--seed",), "Seed of this command's own random draws",
    ("separability", "tsne", "neighbors", "datasets build-waterbirds", "datasets build-treeperson", "suggest",
     "export-label-studio", "label"), click.INT)
METRIC = Shared(
    "Evaluation metric", ("--metric",), "An evaluation metric, as run records name it: accuracy, worst_group, "
    "class_balanced_accuracy, macro_f1, GROUP_accuracy_pQ, or one group value as SPEC=VALUE "
    "(label*place=waterbird*land).", ("al", "report"), click.STRING, {"metavar": "METRIC"})
DISTANCE = Shared(
    "Distance between vectors", ("--distance",), "cosine: 1 - cosine similarity (inner product of L2-normalised "
    "vectors); l2: Euclidean distance.", ("neighbors",), click.Choice(["cosine", "l2"]))
DEVICE = Shared(
    "Device", ("--device",), "Where to compute: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda, or "
    "cuda:N.", ("extract", "al", "neighbors"), Device())
AMP = Shared(
    "Mixed precision", ("--amp",), "Autocast precision of the network's forward passes: auto (bf16 on CUDA, none on "
    "the CPU), bf16, fp16 (inference only: finetuning refuses it), or none.", ("extract", "al"),
    click.Choice(["auto", "bf16", "fp16", "none"]))
OUT = Shared(
    "Output", ("--out",), "Where this command writes; a complete output there is never replaced without "
    "--overwrite.", tuple(OUT_KINDS), click.Path(path_type=Path))
OVERWRITE = Shared(
    "Replacing an output", ("--overwrite",), "Replace a complete earlier output of this command at --out, once "
    "the new one is complete.",
    ("extract", "import", "merge", "report", "separability", "tsne", "neighbors", "demo",
     "datasets build-waterbirds", "datasets build-treeperson", "suggest", "predict", "export-label-studio"),
    None, {"is_flag": True})
QUIET = Shared(
    "Quiet", ("--quiet",), "No progress bars.", ("extract", "import", "al", "report", "separability", "neighbors",
                                                 "datasets build-waterbirds", "datasets build-treeperson", "suggest",
                                                 "predict", "export-label-studio", "sweep"),
    None, {"is_flag": True})
JOBS = Shared(
    "Parallel runs", ("--jobs",), "AL runs in parallel processes", ("al", "demo", "sweep"), click.IntRange(min=1))
EXECUTOR = Shared(
    "Where work runs", ("--executor",), "local: on this machine; ray: tasks on a Ray cluster (pip install "
    "'embedcache[ray]') whose machines see the same paths", ("al", "extract", "sweep"), click.Choice(["local", "ray"]))
ADDRESS = Shared(
    "Ray cluster", ("--address",), "With --executor ray: the cluster's head (as `ray start --head` prints it), or "
    "auto; default: $RAY_ADDRESS, else a Ray instance started for this command alone.", ("al", "extract", "sweep"),
    click.STRING, {"metavar": "HOST:PORT"})
STRATEGY = Shared(
    "Strategy", ("--strategy",), "An acquisition strategy, with options as NAME:KEY=VALUE,KEY=VALUE (e.g. "
    "probcover:delta=0.3, batchbald:samples=100): random; uncertainty least-confidence, entropy, margin, max-logit; "
    "diversity coreset, badge, typiclust, probcover; Bayesian bald, batchbald; stochastic batches "
    "power-/softmax-/rank-SCORE for SCORE least-confidence, entropy, margin, bald; cluster-margin (the README's "
    "strategies table lists their options; a misspelt name or option exits at once, listing the known ones).",
    ("al", "tsne", "suggest", "export-label-studio", "label"), Registered("strategy", _strategy, "NAME[:OPTIONS]"))
PROTOCOL = Shared(
    "Protocol", ("--protocol",), "An AL protocol preset: waterbirds, treeperson, iwildcam, amazon, appendix-d, or "
    "custom (the options below override any).", ("al",), Registered("protocol", _protocol))
DATASET = Shared(
    "Dataset adapter", ("--dataset",), "Dataset adapter: imagefolder, manifest, jsonl, or a paper dataset (see "
    "data/README.md).", ("extract", "al"), Registered("dataset", _dataset))
ROOT = Shared(
    "Dataset location", ("--root",), "Where the dataset is: a folder, a manifest CSV or a .jsonl file, as the "
    "adapter expects (the WILDS datasets' adapters also take the folder holding theirs).",
    ("extract", "al", "datasets download"), click.Path(path_type=Path))
DATASET_OPTION = Shared(
    "Dataset adapter option", ("-o", "--option"), "An adapter option, e.g. -o text_field=review. Repeatable.",
    ("extract", "al"), click.STRING, {"multiple": True, "metavar": "KEY=VALUE"})
BACKBONE = Shared(
    "Backbone", ("--backbone",), "timm:<model> (images, e.g. timm:resnetv2_50x1_bit.goog_in21k) or "
    "hf:<name-or-folder> (text).", ("extract", "al"), Registered("backbone", _backbone, "KIND:NAME"))
WEIGHTS = Shared(
    "Backbone weights", ("--weights",), "'pretrained' (from the hub), 'random' (seeded init: the non-pretrained "
    "control), or a checkpoint file: BiT .npz, .safetensors, or a torch state dict (.pt/.pth/.bin).",
    ("extract", "al"), click.STRING)
MAX_LENGTH = Shared(
    "Text length", ("--max-length",), "Text backbones: tokens kept per example.", ("extract", "al"), click.INT)
POOLING = Shared(
    "Text pooling", ("--pooling",), "Text backbones: mean of the last hidden state over tokens (default) or its "
    "[CLS] row.", ("extract", "al"), click.Choice(["mean", "cls"]))
WORKERS = Shared(
    "Loader processes", ("--workers",), "DataLoader worker processes; default: CPUs - 1 (max 8) for images, 0 for "
    "text.", ("extract", "al"), click.IntRange(min=0))
DTYPE = Shared(
    "Storage precision", ("--dtype",), "Storage precision of the embeddings.", ("extract", "import"),
    click.Choice(["float16", "float32"]))
GROUP = Shared(
    "Group", ("--group",), "A group: an attribute column such as place or user (label*place combines columns "
    "where the command says so). Repeatable.", ("al", "import", "report", "separability"), click.STRING,
    {"multiple": True})
SPLIT = Shared(
    "Split", ("--split",), "A split by name (train, val, test, id_val, ...)",
    ("report", "tsne", "neighbors", "suggest", "predict", "export-label-studio", "label"), click.STRING)
C = Shared(
    "Linear head strength", ("--C",), "Inverse L2 strength of the linear head, as scikit-learn's "
    "LogisticRegression(C=...).", ("al", "separability"), click.FloatRange(min=0, min_open=True))

K = Shared(
    "How many", ("--k",), "The k of the command's top k", ("neighbors", "suggest", "export-label-studio"),
    click.IntRange(min=1))
LABELS = Shared(
    "Labels of your own data", ("--labels",), "Labels so far: our CSV (id,label,annotator,time,note; an undo or a "
    "skip is an appended row with an empty label) or a Label Studio JSON export (choices).",
    ("suggest", "predict", "export-label-studio", "label"), click.Path(path_type=Path, dir_okay=False))
ID_FIELD = Shared(
    "Label Studio id field", ("--id-field",), "Label Studio exports: the task data field holding the cache id.",
    ("suggest", "predict", "export-label-studio"), click.STRING)
CLASSES = Shared(
    "Class names", ("--classes",), "Class names, comma-separated, in key order. Default: the cache's label names, "
    "then every new name the labels file brings, in order of first appearance.",
    ("suggest", "predict", "export-label-studio", "label"), click.STRING, {"metavar": "A,B,..."})
IGNORE_CACHE_LABELS = Shared(
    "Ignoring a cache's labels", ("--ignore-cache-labels",), "Treat the cache's own labels as unknown, so every row "
    "can be labelled: for trying the workflow on a dataset whose answers are known (the demo does).",
    ("suggest", "predict", "export-label-studio", "label"), None, {"is_flag": True})
ROUND_SIZE = Shared(
    "Stopping-signal rounds", ("--round-size",), "Labels per round of the stopping signals' history.",
    ("suggest", "label"), click.IntRange(min=1))
MEDIA = Shared(
    "Media folder", ("--media",), "The folder images are served from; image paths are relative to it. Default: the "
    "image folder of the dataset the cache was extracted from.", ("label", "export-label-studio"),
    click.Path(path_type=Path, file_okay=False))
HOST = Shared(
    "Server address", ("--host",), "Address the labelling page listens on. Only loopback addresses keep the page "
    "private to this machine.", ("label", "demo"), click.STRING)
PORT = Shared(
    "Server port", ("--port",), "Port the labelling page listens on (0: any free port; the URL is printed).",
    ("label", "demo"), click.IntRange(0, 65535))
OPEN = Shared(
    "Opening a browser", ("--open",), "Open the labelling page in your web browser (the URL is printed either way).",
    ("label", "demo"), None, {"is_flag": True})

SHARED: tuple[Shared, ...] = (RUNS, SEEDS, INIT_SEED, SEED, METRIC, DISTANCE, DEVICE, AMP, OUT, OVERWRITE, QUIET, JOBS,
                              EXECUTOR, ADDRESS,
                              STRATEGY, PROTOCOL, DATASET, ROOT, DATASET_OPTION, BACKBONE, WEIGHTS, MAX_LENGTH,
                              POOLING, WORKERS, DTYPE, GROUP, SPLIT, C, K, LABELS, ID_FIELD, CLASSES,
                              IGNORE_CACHE_LABELS, ROUND_SIZE, MEDIA, HOST, PORT, OPEN)


# --------------------------------------------------------------------------- old spellings, still read
@dataclasses.dataclass(frozen=True)
class Rename:
    """An old spelling that still works (hidden, with a note on stderr): the table's third part."""

    command: str
    old: str
    new: str
    why: str


RENAMES: tuple[Rename, ...] = (
    Rename("extract", "--seed", "--init-seed", "--seed is each command's own random draws; extract's was the init"),
    Rename("neighbors", "--metric", "--distance", "--metric is an evaluation metric"),
    Rename("neighbors", "--device gpu", "--device cuda", "one device syntax for every command"),
    Rename("report", "RUNS (positional)", "--runs", "run inputs are --runs in every command"),
    Rename("repair", "RECORDS (positional)", "--runs", "run inputs are --runs in every command"),
    Rename("datasets build-waterbirds", "--workers", "--threads", "--workers is DataLoader processes"),
    Rename("demo", "--seeds N (a count)", "--seeds 0-(N-1)", "--seeds lists run seeds, as in al"),
)


def renamed(command: str, old: str, target: str, **attrs: Any) -> Callable:
    """The hidden old spelling `old` of the option named `target` in `command` (see RENAMES)."""
    rename = next(r for r in RENAMES if r.command == command and r.old == old)
    return deprecated_alias(old, target=target, instead=f"write {rename.new} ({rename.why})", **attrs)


# ----------------------------------------------------------------------------------------- the table
def render() -> str:
    """Markdown: the shared options, what --out is per command, and the old spellings still read."""
    lines = ["| concept | option | meaning | commands |", "|---|---|---|---|"]
    for s in SHARED:
        meaning = s.meaning if s.meaning.endswith(".") else f"{s.meaning}."
        lines.append(f"| {s.concept} | {', '.join(f'`{d}`' for d in s.decls)} | {_md(meaning)} | "
                     f"{', '.join(s.commands)} |")
    lines += ["", "What `--out` is in each command:", "", "| command | `--out` |", "|---|---|"]
    lines += [f"| {command} | {_md(kind)} |" for command, kind in OUT_KINDS.items()]
    lines += ["", "Old spellings that still work, each with a note on stderr:", "",
              "| command | old | now | why |", "|---|---|---|---|"]
    lines += [f"| {r.command} | `{r.old}` | `{r.new}` | {_md(r.why)} |" for r in RENAMES]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*")
