"""What a strategy is, the registry `al --strategy` names it in, and the one syntax for its options.

A strategy picks the next examples to label from the unlabelled candidates, given the learner that
ranks the pool (`learner.ranker`, fitted on the labelled set) and the rows labelled so far (what
diversity strategies measure distances to), and declares the learner capabilities it needs
(`requires`, see `embedcache.learners.base`). The loop checks `requires` against that
learner while a run is planned, so a strategy only ever sees a learner that offers what it asks for.

Options. A strategy class declares its options (`options`: name, default, type, meaning); a user
writes them after the name, `probcover:delta=0.3` or `batchbald:samples=100,joint=10000`, and a sweep
plan as a table `{name = "probcover", delta = 0.3}`. `parse_strategy` checks them against the
declaration (a ConfigError names the strategy and the option) and gives a `StrategySpec` whose
`text` is the canonical spelling: options sorted, values in one form, defaults left out. That text
is what a run record's header names as its strategy (so a run with other options is another run
configuration, with another record file) and what `create_strategy` builds a strategy from.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from embedcache.errors import ConfigError
from embedcache.learners.base import Capability, Learner
from embedcache.registry import Registry

#: An option whose default is chosen by the algorithm from the data (ProbCover's δ by the purity rule).
AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a strategy: `kind` int, float or str (then one of `choices`); `default` may be
    AUTO (the algorithm chooses); values below `minimum` (or at it, when `open_minimum`) or above
    `maximum` are refused."""

    name: str
    kind: type
    default: Any
    meaning: str
    minimum: float | None = None
    open_minimum: bool = False
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def parse(self, value: Any, strategy: str) -> Any:
        """The option's value from its command-line text or a plan's TOML value (int, float, str)."""
        if isinstance(value, str) and value == AUTO and self.default == AUTO:
            return AUTO
        try:
            if isinstance(value, bool):
                raise ValueError
            if self.kind is int:
                parsed = int(value) if isinstance(value, (int, np.integer)) else int(str(value), 10)
            elif self.kind is float:
                parsed = float(value)
                if not math.isfinite(parsed):
                    raise ValueError
            else:
                parsed = str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"strategy {strategy!r}, option {self.name}: expected {self.expects()}, got {value!r}") from None
        if self.choices and parsed not in self.choices:
            raise ConfigError(f"strategy {strategy!r}, option {self.name}: expected one of {', '.join(self.choices)}, "
                              f"got {value!r}")
        if (self.minimum is not None and (parsed < self.minimum or (self.open_minimum and parsed == self.minimum))) \
                or (self.maximum is not None and parsed > self.maximum):
            raise ConfigError(f"strategy {strategy!r}, option {self.name}: expected {self.expects()}, got {value!r}")
        return parsed

    def expects(self) -> str:
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        what = {int: "an integer", float: "a number"}.get(self.kind, "a word")
        if self.minimum is not None:
            what += f" {'>' if self.open_minimum else '>='} {self.minimum:g}"
        if self.maximum is not None:
            what += f" and <= {self.maximum:g}"
        return what + (" or auto" if self.default == AUTO else "")

    def text(self, value: Any) -> str:
        """The canonical spelling of a value (`repr` of a float: the shortest that reads back the same)."""
        return repr(value) if isinstance(value, float) else str(value)

    def describe(self) -> str:
        """`name=default` and its meaning, for help texts and the README."""
        return f"{self.name}={self.text(self.default)} ({self.meaning})"


class Strategy(abc.ABC):
    """Picks the next examples to label. `requires`: the capabilities `select` uses of the learner;
    `options`: what `create_strategy` may set (each passed to the constructor as a keyword);
    `cold_start`: whether `seed_set` can choose a seed set from embeddings alone (no labels yet)."""

    name: str
    requires: frozenset[Capability] = frozenset()
    options: ClassVar[tuple[Option, ...]] = ()
    cold_start: ClassVar[bool] = False

    @abc.abstractmethod
    def select(self, learner: Learner, candidates: np.ndarray, labeled: np.ndarray, k: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the k chosen `candidates`, first choice first (all of them when k exceeds their
        number). `labeled`: the rows the learner was fitted on. Every random choice comes from `seed`, and
        the order candidates come in does not matter."""

    def prepare(self, learner: Learner, pool: np.ndarray, seed: int) -> None:
        """Called once per run by the loop, before the learner's first fit, with the pool and the run seed:
        state a strategy keeps across rounds is made here, so a resumed run rebuilds exactly the same."""

    def seed_set(self, embeddings: np.ndarray, k: int, seed: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """For `cold_start` strategies: k positions of `embeddings` (the pool) chosen without labels."""
        raise ConfigError(f"strategy {self.name!r} cannot choose a seed set without labels", param="seed_strategy")


StrategyFactory = Callable[..., Strategy]
STRATEGIES: Registry[StrategyFactory] = Registry("strategy")


def declared_options(name: str) -> tuple[Option, ...]:
    """The options the strategy registered as `name` takes (a factory that is no Strategy class takes none)."""
    factory = STRATEGIES.get(name)
    return factory.options if isinstance(factory, type) and issubclass(factory, Strategy) else ()


@dataclasses.dataclass(frozen=True)
class StrategySpec:
    """A registered strategy name and every one of its options' values (defaults included)."""

    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def text(self) -> str:
        """The canonical spelling: `name`, or `name:key=value,...` with the options that differ from their
        defaults, sorted."""
        changed = [f"{o.name}={o.text(self.options[o.name])}" for o in sorted(declared_options(self.name),
                                                                              key=lambda o: o.name)
                   if self.options[o.name] != o.default]
        return f"{self.name}:{','.join(changed)}" if changed else self.name


def strategy_spec(name: str, options: Mapping[str, Any] | None = None) -> StrategySpec:
    """Check `options` (text or TOML values) against what the strategy `name` declares, defaults filled in."""
    declared = {o.name: o for o in declared_options(name)}  # an unknown name fails here, listing the known ones
    unknown = sorted(set(options or {}) - set(declared))
    if unknown:
        takes = f"its options: {', '.join(o.describe() for o in declared.values())}" if declared \
            else "it takes no options"
        raise ConfigError(f"strategy {name!r} has no option {', '.join(unknown)}; {takes}")
    values = {key: option.default for key, option in declared.items()}
    values.update({key: declared[key].parse(value, name) for key, value in (options or {}).items()})
    return StrategySpec(name, values)


def parse_strategy(text: str) -> StrategySpec:
    """`name` or `name:key=value,key=value` (the command line's syntax), checked."""
    name, _, rest = str(text).partition(":")
    options: dict[str, str] = {}
    for item in rest.split(",") if rest else []:
        key, equals, value = item.partition("=")
        if not equals or not key.strip() or key.strip() in options:
            raise ConfigError(f"{text!r}: options are written name:key=value,key=value, each key once")
        options[key.strip()] = value.strip()
    return strategy_spec(name.strip(), options)


def parse_strategies(text: str) -> list[StrategySpec]:
    """A comma-separated list of strategies (`random,probcover:delta=0.3,alpha=0.9,margin`): a piece
    with `=` and no `:` is one more option of the strategy before it."""
    pieces: list[str] = []
    for piece in (p.strip() for p in str(text).split(",")):
        if "=" in piece and ":" not in piece and pieces and ":" in pieces[-1]:
            pieces[-1] += f",{piece}"
        elif piece:
            pieces.append(piece)
    if not pieces:
        raise ConfigError(f"{text!r}: name at least one strategy")
    return [parse_strategy(piece) for piece in pieces]


def cold_start_spec(text: str) -> str:
    """The canonical spelling of a seed strategy: one that chooses a seed set without labels (typiclust,
    probcover, coreset; with options), else a ConfigError naming `seed_strategy`."""
    try:
        spec = parse_strategy(text)
    except ConfigError as e:
        raise ConfigError(e.message, param="seed_strategy") from None
    factory = STRATEGIES.get(spec.name)
    if not (isinstance(factory, type) and issubclass(factory, Strategy) and factory.cold_start):
        raise ConfigError(f"{spec.name!r} cannot choose a seed set without labels; use random, balanced, typiclust, "
                          "probcover or coreset", param="seed_strategy")
    return spec.text


def create_strategy(text: str) -> Strategy:
    """The strategy a spec names (`random`, `least-confidence`, `probcover:delta=0.3`, ...), its options set."""
    spec = parse_strategy(text)
    return STRATEGIES.get(spec.name)(**spec.options)
