"""The reuse decision, row by row: which earlier measurement stands for a new one."""
from __future__ import annotations

from dataclasses import dataclass, field

from autotune.reuse import Today, reusable


@dataclass
class Row:
    id: int
    status: str
    study: str = "s"
    figures: dict = field(default_factory=dict)
    trial_limit_s: float | None = 100.0


TODAY = Today("s", trial_limit_s=100.0, lanes=2)


def test_nothing_earlier_nothing_reused():
    assert reusable([], TODAY) is None


def test_a_success_always_stands():
    ok = Row(1, "ok", study="other")
    assert reusable([ok], TODAY) is ok
    assert reusable([ok], TODAY, is_baseline=True) is ok


def test_a_loser_on_sampled_decode_stands_within_its_study_only():
    """Its longer shapes' decode was sampled (it never decoded the envelope's last positions), judged a
    loser against its own study's incumbent: another study measures it again."""
    sampled = {"decode_sampled": 16}
    assert reusable([Row(1, "ok", study="s", figures=sampled)], TODAY).id == 1
    assert reusable([Row(1, "ok", study="other", figures=sampled)], TODAY) is None
    assert reusable([Row(1, "ok", study="other", figures={"screened": True})], TODAY).id == 1


def test_remeasure_reuses_only_what_this_run_measured():
    ok = Row(1, "ok")
    assert reusable([ok], Today("s", remeasure=True)) is None
    assert reusable([ok], Today("s", remeasure=True, measured_now=frozenset({1}))) is ok


def test_a_failed_baseline_is_measured_again():
    assert reusable([Row(1, "error")], TODAY, is_baseline=True) is None


def test_a_timeout_under_a_shorter_limit_says_nothing_about_today():
    assert reusable([Row(1, "timeout", trial_limit_s=50.0)], TODAY) is None
    short = Row(1, "timeout", trial_limit_s=200.0)
    assert reusable([short], TODAY) is short


def test_a_compile_past_a_cap_at_least_todays_stands():
    capped = Row(2, "pruned", figures={"first_call_cap_s": 60.0, "lanes": 2})
    assert reusable([capped], TODAY, first_call_cap_s=60.0) is capped
    assert reusable([capped], TODAY, first_call_cap_s=120.0) is None  # a larger cap: measure again
    assert reusable([capped], Today("s", lanes=1), first_call_cap_s=60.0) is None  # fewer lanes beside it
    ok = Row(1, "ok")
    assert reusable([capped, ok], TODAY, first_call_cap_s=60.0) is ok  # it did compile once
    # the team compile cache holds its compile now: its first call loads it, so a compile stopped at the
    # cap says nothing (unless that trial loaded an artifact too)
    assert reusable([capped], TODAY, first_call_cap_s=60.0, loads=True) is None
    loaded = Row(3, "pruned", figures={"first_call_cap_s": 60.0, "lanes": 2, "compile_shared": "loaded 0123abcd"})
    assert reusable([loaded], TODAY, first_call_cap_s=60.0, loads=True) is loaded


def test_failures_stand_in_their_study_and_after_two_studies():
    failed = Row(1, "crash", study="s")
    assert reusable([failed], TODAY) is failed
    elsewhere = Row(1, "crash", study="a")
    assert reusable([elsewhere], TODAY) is None  # another study retries once
    twice = [Row(2, "crash", study="b"), elsewhere]
    assert reusable(twice, TODAY) is twice[0]  # failed in two studies: stays failed


def test_a_hopeless_candidate_is_judged_again_by_another_study():
    hopeless = Row(1, "pruned", study="a", figures={"e2e_ms_p50": 5.0})
    assert reusable([hopeless], TODAY) is None
    mine = Row(1, "pruned", study="s")
    assert reusable([mine], TODAY) is mine
