"""Alarm rules: the grammar, its errors, and the hysteresis state machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq_runtime.settings import SettingsError
from site_node.scoring.rules import Rule, RuleState, parse_rule, parse_rules


def test_the_issue_examples_parse() -> None:
    r = parse_rule("rul < 30")
    assert (r.output, r.op, r.threshold, r.windows, r.severity) == ("rul", "<", 30, 1, "warning")
    assert r.clear_at == pytest.approx(33.0)
    assert r.alarm_id == "rul_lt_30"
    p = parse_rule("p_fail > 0.8 for 3 windows")
    assert (p.op, p.threshold, p.windows, p.clear_at) == (">", 0.8, 3, pytest.approx(0.72))
    assert p.alarm_id == "p_fail_gt_0p8"
    c = parse_rule("rul <= 30 severity critical")
    assert (c.op, c.severity, c.alarm_id) == ("<=", "critical", "rul_le_30")


def test_every_clause_in_any_order_and_without_spaces_around_the_comparison() -> None:
    r = parse_rule("temp>=90 id overheat clear at 80 severity info for 2 window")
    assert (r.output, r.op, r.threshold, r.clear_at, r.severity, r.windows, r.alarm_id) == (
        "temp", ">=", 90, 80, "info", 2, "overheat",
    )  # fmt: skip
    assert parse_rule("t >= -5").alarm_id == "t_ge_m5"
    assert parse_rule("  rul   <   30  ").text == "rul < 30"
    assert "clear at 33" in parse_rule("rul < 30").describe()


def test_the_id_ignores_count_severity_and_clear_level() -> None:
    ids = {parse_rule(t).alarm_id for t in ("rul < 30", "rul < 30 for 4 windows severity critical",
                                            "rul < 30 clear at 50")}  # fmt: skip
    assert ids == {"rul_lt_30"}


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ("", 1, "empty rule"),
        ("rul", 4, "expected a comparison"),
        ("rul = 30", 5, "found '='"),
        ("rul == 30", 5, "found '=='"),
        ("rul < thirty", 7, "expected a threshold number, found 'thirty'"),
        ("rul < nan", 7, "finite"),
        ("rul < 30 for", 13, "found the end of the rule"),
        ("rul < 30 for 0 windows", 14, "integer 1-"),
        ("rul < 30 for 2.5 windows", 14, "integer 1-"),
        ("rul < 30 for 3 cycles", 16, "expected 'windows'"),
        ("rul < 30 clear 40", 16, "expected 'at'"),
        ("rul < 30 clear at 20", 10, "strictly above the threshold 30"),
        ("p > 0.8 clear at 0.9", 9, "strictly below"),
        ("rul < 30 severity high", 19, "severity must be info, warning or critical"),
        ("rul < 30 for 2 windows for 3 windows", 24, "'for' given twice (first at column 10)"),
        ("rul < 30 when hot", 10, "unknown clause 'when'"),
        ("rul < 30 id bad.id", 13, "alarm id 'bad.id'"),
        ("r/u < 3", 1, "output name 'r/u'"),
        ("x < 0", 1, "threshold of 0 has no default hysteresis band"),
    ],
)
def test_errors_name_the_rule_the_column_and_what_was_expected(
    text: str, column: int, words: str
) -> None:
    with pytest.raises(ValueError) as err:
        parse_rules(["rul < 30", text])
    msg = str(err.value)
    assert msg.startswith(f"rule 2 {text!r}: column {column}: "), msg
    assert words in msg, msg


def test_a_zero_threshold_with_an_explicit_clear_level_is_fine() -> None:
    r = parse_rule("drift > 0 clear at -1")
    assert r.clear_at == -1


def test_duplicate_ids_and_too_many_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="alarm id 'rul_lt_30' is also rule 1's"):
        parse_rules(["rul < 30", "rul < 30 severity critical"])
    assert len(parse_rules(["rul < 30", "rul < 30 severity critical id rul_crit"])) == 2
    with pytest.raises(ValueError, match="at most 16"):
        parse_rules([f"x > {i + 1}" for i in range(17)])
    with pytest.raises(TypeError):
        parse_rules("rul < 30")


def _feed(rule: Rule, values: list[float]) -> list[str]:
    state, out = RuleState(), []
    for i, v in enumerate(values):
        if state.update(rule, v, i + 1):
            out.append(f"{i}:{state.state}")
    return out


def test_active_after_n_windows_and_cleared_after_n_windows_past_the_clear_level() -> None:
    rule = parse_rule("rul < 30 for 2 windows")  # clears at 33
    # one low window is not enough; two are; 31/32 sit in the band; two >= 33 clear it.
    assert _feed(rule, [40, 29, 35, 29, 28, 31, 32, 33, 29, 33, 34, 20]) == [
        "4:active",
        "10:cleared",
    ]


def test_inclusive_comparisons_and_explicit_clear_level() -> None:
    rule = parse_rule("p <= 0.5 clear at 0.6")
    assert _feed(rule, [0.7, 0.5, 0.55, 0.59, 0.6, 0.5]) == ["1:active", "4:cleared", "5:active"]
    high = parse_rule("t > 10")  # clears at <= 9
    assert _feed(high, [10, 10.5, 9.5, 9.0, 11]) == ["1:active", "3:cleared", "4:active"]


def test_state_records_since_and_value() -> None:
    rule, state = parse_rule("rul < 30"), RuleState()
    assert not state.update(rule, 50, 1000)
    assert state.update(rule, 20, 2000)
    assert (state.active, state.since, state.value) == (True, 2000, 20)


@settings(max_examples=300, deadline=None)
@given(
    threshold=st.floats(min_value=1, max_value=1000),
    op=st.sampled_from(["<", "<=", ">", ">="]),
    n=st.integers(min_value=1, max_value=4),
    noise=st.lists(st.floats(min_value=-0.099, max_value=0.099), min_size=1, max_size=200),
)
def test_a_value_hovering_at_the_threshold_changes_state_at_most_once(
    threshold: float, op: str, n: int, noise: list[float]
) -> None:
    # Values within the 10 % band around the threshold: whatever their order, once an
    # alarm is active it never clears (nothing goes past the clear level), so no flapping.
    rule = parse_rule(f"x {op} {threshold!r} for {n} windows")
    values = [threshold * (1 + f) for f in noise]
    assert len(_feed(rule, values)) <= 1


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(min_value=0, max_value=100), max_size=300),
    n=st.integers(min_value=1, max_value=3),
)
def test_transitions_alternate_and_need_n_consecutive_windows(values: list[float], n: int) -> None:
    rule = parse_rule(f"v < 50 for {n} windows")  # clears at >= 55
    state, active = RuleState(), False
    run_low = run_high = 0
    for i, v in enumerate(values):
        run_low = run_low + 1 if v < 50 else 0
        run_high = run_high + 1 if v >= 55 else 0
        changed = state.update(rule, v, i + 1)
        if changed:
            # A transition needs the last n values all beyond the relevant level.
            assert (run_high if active else run_low) >= n
            active = not active
            run_low = run_high = 0
        else:
            # ... and n such values always make one.
            assert (run_high if active else run_low) < n
        assert state.active == active


def test_a_bad_default_rule_in_the_site_config_is_refused_with_its_column(tmp_path: Path) -> None:
    from site_node.settings import load_site_settings

    config = tmp_path / "site.toml"
    config.write_text('site_id = "p"\n[scoring]\nrules = ["rul < 30", "rul <"]\n')
    with pytest.raises(SettingsError) as err:
        load_site_settings(config)
    assert "rule 2 'rul <': column 6: expected a threshold number" in str(err.value)
