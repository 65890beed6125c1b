"""Stage statistics: counters that merge by addition, plus wall time."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping


@dataclass
class StageStats:
    """What a stage did. Counters carry the reasons (``skipped:bad_json``...)."""

    stage: str
    counters: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    # seconds spent in each step of a stage that has several (the metadata pass)
    timings: Counter = field(default_factory=Counter)

    def add(self, key: str, n: int = 1) -> None:
        self.counters[key] += n

    def __getitem__(self, key: str) -> int:
        return self.counters.get(key, 0)

    def merge(self, other: "StageStats") -> "StageStats":
        return StageStats(
            stage=self.stage,
            counters=self.counters + other.counters,
            seconds=self.seconds + other.seconds,
            outputs=self.outputs + other.outputs,
            timings=self.timings + other.timings,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {
            "stage": self.stage,
            "counters": dict(sorted(self.counters.items())),
            "seconds": round(self.seconds, 3),
            "outputs": list(self.outputs),
        }
        if self.timings:
            out["timings"] = {k: round(v, 3) for k, v in sorted(self.timings.items())}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StageStats":
        return cls(
            stage=data["stage"],
            counters=Counter(data.get("counters", {})),
            seconds=float(data.get("seconds", 0.0)),
            outputs=list(data.get("outputs", [])),
            timings=Counter(data.get("timings", {})),
        )

    @classmethod
    def total(cls, stage: str, parts: Iterable["StageStats"]) -> "StageStats":
        out = cls(stage)
        for part in parts:
            out = out.merge(part)
        return out


class UndeclaredCounter(KeyError):
    """A stage counted, or a reader asked for, a counter the stage does not declare: a renamed counter
    would otherwise read as zero."""

    def __str__(self) -> str:  # KeyError quotes its message
        return str(self.args[0])


@dataclass(frozen=True)
class Counters:
    """The counters a stage declares (the stage registry lists them): exact names, and prefixes of the
    counters that carry a reason (``skipped:bad_json``). Readers go through `get`, which refuses a name
    the stage does not declare; `check` refuses stats holding one."""

    stage: str
    names: frozenset[str]
    prefixes: tuple[str, ...] = ()

    @classmethod
    def of(cls, stage: str, names: Iterable[str], prefixes: Iterable[str] = ()) -> "Counters":
        return cls(stage, frozenset(names), tuple(prefixes))

    def declares(self, key: str) -> bool:
        return key in self.names or any(key.startswith(p) for p in self.prefixes)

    def _refuse(self, keys: Iterable[str], what: str) -> None:
        bad = sorted(k for k in keys if not self.declares(k))
        if bad:
            raise UndeclaredCounter(f"stage {self.stage} {what} {', '.join(bad)}, which it does not declare "
                                    f"(declared: {', '.join(sorted(self.names) + [p + '*' for p in self.prefixes])})")

    def get(self, counters: Mapping[str, int] | StageStats, key: str) -> int:
        self._refuse([key], "has no counter")
        found = counters.counters if isinstance(counters, StageStats) else counters
        return int(found.get(key, 0))

    def check(self, counters: Mapping[str, int] | StageStats) -> Mapping[str, int]:
        found = counters.counters if isinstance(counters, StageStats) else counters
        self._refuse(found, "counted")
        return found
