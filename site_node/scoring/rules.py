"""Alarm rules: a small grammar, and a state machine with hysteresis per rule and device.

Grammar (words are case-sensitive, tokens separated by spaces; ``rul<30`` also reads)::

    rule   := OUTPUT OP NUMBER clause*
    OP     := "<" | "<=" | ">" | ">="
    clause := "for" INT ("window" | "windows")     # consecutive windows (default 1)
            | "clear" "at" NUMBER                  # the clear level (default: see below)
            | "severity" ("info" | "warning" | "critical")   # default warning
            | "id" NAME                            # the alarm id (default: derived)

Examples: ``rul < 30``, ``p_fail > 0.8 for 3 windows``, ``rul <= 30 severity critical``,
``temp >= 90 clear at 80 for 2 windows id overheat``. Each clause at most once, in any
order. ``OUTPUT`` is a name the task's ``predict`` returns (its ``OUTPUTS``).

Hysteresis: a rule's alarm becomes **active** after ``N`` consecutive windows whose value
is beyond the threshold (``value OP threshold``), and **clears** only after ``N``
consecutive windows whose value is back past the *clear level*: at or above it for ``<``
and ``<=``, at or below it for ``>`` and ``>=``. A value between the threshold and the
clear level changes nothing (it resets the count towards the other state), so a value
hovering at the threshold does not flap. The clear level is ``clear at X`` (it must lie
strictly on the normal side of the threshold), else the threshold moved towards normal by
:data:`DEFAULT_BAND` (10 %) of its magnitude: ``rul < 30`` clears at 33, ``p_fail > 0.8``
at 0.72. A threshold of 0 has no magnitude: such a rule needs an explicit ``clear at``.

The alarm id (the ``alarm_id`` of the retained :class:`schemas.Alarm`) is ``id NAME`` or
else derived from output, comparison and threshold only, so it stays the same when only
the count, clear level or severity of a rule changes: ``rul < 30`` -> ``rul_lt_30``,
``p_fail > 0.8`` -> ``p_fail_gt_0p8``, ``temp >= -5`` -> ``temp_ge_m5``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DEFAULT_BAND",
    "MAX_RULES",
    "SEVERITIES",
    "Rule",
    "RuleState",
    "parse_rule",
    "parse_rules",
    "severity_rank",
]

Op = Literal["<", "<=", ">", ">="]
Severity = Literal["info", "warning", "critical"]

DEFAULT_BAND = 0.10
"""Default hysteresis band: the clear level is the threshold moved 10 % of |threshold|."""
MAX_RULES = 16
MAX_WINDOWS = 10_000
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
_OPS: dict[str, str] = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
_OUTPUT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_TOKEN = re.compile(r"\s*(<=|>=|==|!=|=>|=<|[<>=!]|[^\s<>=!]+)")


def severity_rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for critical."""
    return SEVERITIES.index(severity)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Rule:
    """One parsed rule; see the module docstring."""

    text: str
    output: str
    op: Op
    threshold: float
    windows: int
    clear_at: float
    severity: Severity
    alarm_id: str

    def beyond(self, value: float) -> bool:
        """The value is beyond the threshold (counts towards active)."""
        t = self.threshold
        match self.op:
            case "<":
                return value < t
            case "<=":
                return value <= t
            case ">":
                return value > t
            case _:
                return value >= t

    def recovered(self, value: float) -> bool:
        """The value is back past the clear level (counts towards cleared)."""
        if self.op in ("<", "<="):
            return value >= self.clear_at
        return value <= self.clear_at

    def describe(self) -> str:
        """The rule in canonical form, every default spelled out."""
        return (
            f"{self.output} {self.op} {_num(self.threshold)} for {self.windows} "
            f"window{'s' if self.windows != 1 else ''} clear at {_num(self.clear_at)} "
            f"severity {self.severity} id {self.alarm_id}"
        )


def _num(x: float) -> str:
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def derived_id(output: str, op: str, threshold: float) -> str:
    """The default alarm id of a rule (see the module docstring)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", output)
    num = _num(threshold).replace("-", "m").replace(".", "p").replace("+", "")
    return f"{name}_{_OPS[op]}_{num}"[:128]


class _Tokens:
    def __init__(self, text: str, label: str) -> None:
        self.text = text
        self.label = label
        self.items: list[tuple[str, int]] = []  # (token, 1-based column)
        pos = 0
        stripped = text.rstrip()
        while pos < len(stripped):
            m = _TOKEN.match(stripped, pos)
            if m is None:  # pragma: no cover - the pattern matches any non-space run
                break
            self.items.append((m.group(1), m.start(1) + 1))
            pos = m.end()
        self.i = 0

    def error(self, msg: str, col: int | None = None) -> ValueError:
        if col is None:
            col = self.items[self.i][1] if self.i < len(self.items) else len(self.text) + 1
        return ValueError(f"{self.label} {self.text!r}: column {col}: {msg}")

    def peek(self) -> str | None:
        return self.items[self.i][0] if self.i < len(self.items) else None

    def take(self, what: str) -> tuple[str, int]:
        if self.i >= len(self.items):
            raise self.error(f"expected {what}, found the end of the rule")
        tok = self.items[self.i]
        self.i += 1
        return tok

    def number(self, what: str) -> float:
        tok, col = self.take(what)
        try:
            value = float(tok)
        except ValueError:
            raise self.error(f"expected {what}, found {tok!r}", col) from None
        if not math.isfinite(value):
            raise self.error(f"{what} must be a finite number, not {tok!r}", col)
        return value


def parse_rule(text: str, label: str = "rule") -> Rule:
    """Parse one rule; ValueError names the rule (``label``), the column and what was
    expected."""
    toks = _Tokens(text, label)
    if not toks.items:
        raise toks.error("empty rule; expected e.g. 'rul < 30' or 'p_fail > 0.8 for 3 windows'")
    output, col = toks.take("an output name")
    if not _OUTPUT.match(output):
        raise toks.error(f"output name {output!r} must be 1-64 of [A-Za-z0-9_.-]", col)
    op, col = toks.take("a comparison (< <= > >=)")
    if op not in _OPS:
        raise toks.error(f"expected a comparison (< <= > >=), found {op!r}", col)
    threshold = toks.number("a threshold number")
    seen: dict[str, int] = {}
    windows = 1
    clear_at: float | None = None
    severity: Severity = "warning"
    alarm_id: str | None = None
    while toks.peek() is not None:
        word, col = toks.take("a clause")
        if word in seen:
            raise toks.error(f"'{word}' given twice (first at column {seen[word]})", col)
        seen[word] = col
        if word == "for":
            n = toks.number("a count of windows")
            if not n.is_integer() or not 1 <= n <= MAX_WINDOWS:
                raise toks.error(f"the count of windows must be an integer 1-{MAX_WINDOWS}",
                                 toks.items[toks.i - 1][1])  # fmt: skip
            windows = int(n)
            unit, ucol = toks.take("'windows'")
            if unit not in ("window", "windows"):
                raise toks.error(f"expected 'windows' after 'for {windows}', found {unit!r}",
                                 ucol)  # fmt: skip
        elif word == "clear":
            at, acol = toks.take("'at'")
            if at != "at":
                raise toks.error(f"expected 'at' after 'clear', found {at!r}", acol)
            clear_at = toks.number("a clear level number")
        elif word == "severity":
            sev, scol = toks.take("a severity (info, warning, critical)")
            if sev not in SEVERITIES:
                raise toks.error(f"severity must be info, warning or critical, not {sev!r}",
                                 scol)  # fmt: skip
            severity = sev  # type: ignore[assignment]
        elif word == "id":
            name, ncol = toks.take("an alarm id")
            if not _ID.match(name):
                raise toks.error(f"alarm id {name!r} must be 1-128 of [A-Za-z0-9_-]", ncol)
            alarm_id = name
        else:
            raise toks.error(
                f"unknown clause {word!r}; expected 'for N windows', 'clear at X', "
                "'severity info|warning|critical' or 'id NAME'",
                col,
            )
    low = op in ("<", "<=")
    if clear_at is None:
        if threshold == 0:
            raise toks.error(
                "a threshold of 0 has no default hysteresis band (10 % of |threshold|): "
                "add 'clear at X'",
                1,
            )
        band = DEFAULT_BAND * abs(threshold)
        clear_at = threshold + band if low else threshold - band
    elif (low and clear_at <= threshold) or (not low and clear_at >= threshold):
        side = "above" if low else "below"
        raise toks.error(
            f"clear at {_num(clear_at)} must lie strictly {side} the threshold "
            f"{_num(threshold)} (the normal side of '{op}')",
            seen["clear"],
        )
    return Rule(
        text=" ".join(text.split()),
        output=output,
        op=op,  # type: ignore[arg-type]
        threshold=threshold,
        windows=windows,
        clear_at=clear_at,
        severity=severity,
        alarm_id=alarm_id or derived_id(output, op, threshold),
    )


def parse_rules(texts: Sequence[str]) -> list[Rule]:
    """Parse every rule; ValueError names the first bad rule (its number and text) and
    the column. Two rules with the same alarm id are refused too."""
    if isinstance(texts, str):
        raise TypeError("parse_rules takes a sequence of rule strings, not one string")
    if len(texts) > MAX_RULES:
        raise ValueError(f"{len(texts)} rules: at most {MAX_RULES}")
    rules: list[Rule] = []
    ids: dict[str, int] = {}
    for i, text in enumerate(texts, 1):
        rule = parse_rule(text, f"rule {i}")
        if rule.alarm_id in ids:
            raise ValueError(
                f"rule {i} {text!r}: alarm id {rule.alarm_id!r} is also rule "
                f"{ids[rule.alarm_id]}'s; give one of them 'id NAME'"
            )
        ids[rule.alarm_id] = i
        rules.append(rule)
    return rules


@dataclass
class RuleState:
    """One rule's alarm on one device: active or not, since when, and the count of
    consecutive windows towards the other state."""

    active: bool = False
    since: int = 0  # epoch ms the current state began (0: never changed)
    value: float | None = None  # the value that last changed the state
    streak: int = 0

    def update(self, rule: Rule, value: float, now_ms: int) -> bool:
        """Feed one window's value; True when the state changed (a transition)."""
        towards = rule.recovered(value) if self.active else rule.beyond(value)
        if not towards:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < rule.windows:
            return False
        self.active = not self.active
        self.since = now_ms
        self.value = value
        self.streak = 0
        return True

    @property
    def state(self) -> Literal["active", "cleared"]:
        return "active" if self.active else "cleared"
