"""The sweep space's parameters: a TOML table or a `--space` spec made into one, what each trial suggests
(define-by-run: a conditional parameter once its parent is known), and a known configuration typed as the
space has it."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from bertnli import BadInput
from bertnli.config import TrainConfig, parse_bool


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "float", "int", "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    when: tuple = ()  # (parent, *values): suggested only in trials whose parent took one of the values

    def active(self, chosen: dict[str, Any]) -> bool:
        """Whether a trial that took `chosen` (the params suggested before this one) has this parameter."""
        return not self.when or (self.when[0] in chosen and chosen[self.when[0]] in self.when[1:])

    def suggest(self, trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def condition(self) -> str:
        """`parent=a|b`, as the space was given it ("" when unconditional)."""
        return f"{self.when[0]}={'|'.join(map(str, self.when[1:]))}" if self.when else ""

    def describe(self) -> str:
        when = f" if {self.condition()}" if self.when else ""
        if self.kind == "categorical":
            return f"{self.name}=" + "|".join(map(str, self.choices)) + when
        return f"{self.name}={self.low:g}:{self.high:g}" + (":log" if self.log else "") + when

    def values(self) -> list:
        """Every value an int/categorical dimension can take (empty for a float range)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1))
        return []


def _choices(name: str, kind_of: str, spec: list) -> Param:
    if not spec:
        raise ValueError("no choices")
    if "bool" in kind_of:
        spec = [parse_bool(x) for x in spec]
    elif "int" in kind_of:
        spec = [int(x) for x in spec]
    elif "float" in kind_of:
        spec = [float(x) for x in spec]
    return Param(name, "categorical", choices=tuple(spec))


def parse_param(name: str, spec: Any) -> Param:
    """TOML `{low, high, log}` / list of choices, or CLI text `1e-5:1e-3:log`, `1:3`, `a|b`."""
    known = {f.name: str(f.type) for f in fields(TrainConfig)}
    if name not in known:
        raise BadInput(f"bad sweep space: {name!r} is not a train setting; use one of {', '.join(sorted(known))}")
    kind_of = known[name]
    try:
        if isinstance(spec, str):
            if "|" in spec or ":" not in spec or "bool" in kind_of or kind_of == "str":  # epochs=1 alone is one choice
                spec = spec.split("|")
            else:
                parts = spec.split(":")
                spec = {"low": float(parts[0]), "high": float(parts[1]), "log": len(parts) > 2 and parts[2] == "log"}
        if isinstance(spec, list):
            return _choices(name, kind_of, spec)
        if "bool" in kind_of:
            raise ValueError("a true/false setting takes choices, not a range")
        low, high, log = float(spec["low"]), float(spec["high"]), bool(spec.get("log", False))
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise BadInput(f"bad sweep space for {name}: {spec!r} ({e}); write low:high[:log] or a|b|c") from None
    if not low < high or (log and low <= 0):
        raise BadInput(f"bad sweep space for {name}: need low < high (and low > 0 for log)")
    return Param(name, "int" if "int" in kind_of else "float", low, high, log)


def parse_space(space_doc: dict[str, Any]) -> tuple[Param, ...]:
    """The space's parameters, each parent before the parameters whose `when` names it (define-by-run: a trial
    suggests a conditional parameter only once it knows its parent's value).

    A condition is `when = "schedule=linear"` in a TOML table (`{low, high, when}`, `{choices, when}`), or
    ` if schedule=linear` after a `--space` spec; `a|b` accepts either value. The parent is a choice of the
    space, and the values are among its choices."""
    conditions, params = {}, {}
    for name, spec in space_doc.items():
        if isinstance(spec, str) and " if " in spec:
            spec, conditions[name] = (part.strip() for part in spec.split(" if ", 1))
        elif isinstance(spec, dict) and "when" in spec:
            conditions[name] = str(spec["when"])
            spec = {k: v for k, v in spec.items() if k != "when"}
        if isinstance(spec, dict) and set(spec) == {"choices"}:
            spec = spec["choices"]
        params[name] = parse_param(name, spec)
    for name, text in conditions.items():
        params[name] = replace(params[name], when=_condition(name, text, params))
    ordered: list[Param] = []
    while len(ordered) < len(params):
        ready = [p for p in params.values() if p not in ordered and (not p.when or params[p.when[0]] in ordered)]
        if not ready:
            raise BadInput(f"bad sweep space: the conditions of {', '.join(conditions)} go round in a circle")
        ordered += ready[:1]
    return tuple(ordered)


def _condition(name: str, text: str, params: dict[str, Param]) -> tuple:
    where = f"sweep space: {name} when {text!r}"
    parent, _, values = text.partition("=")
    p = params.get(parent.strip())
    if p is None or p.kind != "categorical" or not values:
        raise BadInput(f"bad {where}: write PARENT=VALUE[|VALUE], PARENT a choice of the space ({', '.join(params)})")
    return (p.name, *(_known_value(p, v.strip(), where) for v in values.split("|")))


def known_configuration(item: str | dict, space: tuple[Param, ...]) -> dict[str, Any]:
    """`--enqueue "lr=2e-5,epochs=3"` or a `[[sweep.enqueue]]` table -> params typed as the space has them.
    Space parameters it leaves out are sampled."""
    where = f"--enqueue {item}" if isinstance(item, str) else f"[[sweep.enqueue]] {item}"
    if isinstance(item, str):
        pairs = [kv.split("=", 1) for kv in item.split(",") if kv.strip()]
        if not pairs or any(len(kv) != 2 for kv in pairs):
            raise BadInput(f"bad {where}: write NAME=VALUE pairs separated by commas, e.g. lr=2e-5,epochs=3")
        item = {k.strip(): v.strip() for k, v in pairs}
    params = {p.name: p for p in space}
    out = {}
    for name, value in item.items():
        p = params.get(name)
        if p is None:
            raise BadInput(f"bad {where}: {name} is not in the sweep space ({', '.join(params)}); add it with --space")
        out[name] = _known_value(p, value, where)
    for name in out:  # a parent left to the sampler might take a value that leaves the parameter out
        if not params[name].active(out):
            raise BadInput(
                f"bad {where}: {name} is used only if {params[name].condition()}; give {params[name].when[0]} "
                "such a value too, or drop it"
            )
    return out


def values_trained(space: tuple[Param, ...], name: str, base_value: Any) -> list:
    """Every value of the setting `name` that some trial trains with: the space's (every value of an int or a
    choice), and the `[train]` value where the space does not search it or a condition leaves it out."""
    p = next((p for p in space if p.name == name), None)
    if p is None:
        return [base_value]
    values = p.values()
    return values + [base_value] if p.when and base_value not in values else values


def _known_value(p: Param, value: Any, where: str) -> Any:
    if p.kind == "categorical":
        match = [c for c in p.choices if c == value or str(c) == str(value) or _same_number(c, value)]
        if not match:
            raise BadInput(f"bad {where}: {p.name}={value} is not one of {p.describe()}")
        return match[0]
    try:
        v = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v):
        raise BadInput(f"bad {where}: {p.name}={value} is not a number")
    if p.kind == "int":
        if not v.is_integer():  # int() would cut it silently
            raise BadInput(f"bad {where}: {p.name}={value} is not a whole number ({p.describe()})")
        v = int(v)
    if not p.low <= v <= p.high:
        raise BadInput(f"bad {where}: {p.name}={value} is outside the space {p.describe()}")
    return v


def _same_number(choice: Any, value: Any) -> bool:
    if isinstance(choice, bool) or not isinstance(choice, (int, float)):
        return isinstance(choice, bool) and str(value).lower() == str(choice).lower()
    try:
        return float(value) == choice
    except (TypeError, ValueError):
        return False
