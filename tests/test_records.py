"""course_lib.records: the one per-layer type (Profile), the Trace that hands it out, History."""

import math

import numpy as np
import pytest

from course_lib.records import STATS, Profile, Trace


def test_profile_is_an_ordered_read_only_mapping():
    p = Profile({"fc1": 1e-9, "fc2": 1e-5, "out": 0.1}, "grad_norm", "sigmoid")
    assert list(p) == ["fc1", "fc2", "out"] and p["fc2"] == 1e-5 and len(p) == 3
    assert dict(p) == {"fc1": 1e-9, "fc2": 1e-5, "out": 0.1}
    with pytest.raises(ValueError):
        p.array[0] = 1.0
    with pytest.raises(KeyError, match="no layer 'fc9'; layers: \\['fc1', 'fc2', 'out'\\]"):
        p["fc9"]
    assert "sigmoid" in repr(p) and "grad_norm" in repr(p) and len(repr(p)) < 200


def test_first_over_last_ratio_and_factor():
    p = Profile([(f"fc{i}", 0.1 ** (4 - i)) for i in range(5)])
    assert p.first_over_last() == pytest.approx(1e-4)
    assert p.ratio("fc1", "fc2") == pytest.approx(0.1)
    assert p.factor() == pytest.approx(0.1) and p.factor("endpoints") == pytest.approx(0.1)
    assert math.isnan(Profile({"a": 1.0, "b": 0.0}).first_over_last())
    with pytest.raises(ValueError, match="at least two layers"):
        Profile({"a": 1.0}).first_over_last()


def test_select_and_relabel():
    p = Profile({"fc1": 1.0, "norm1": 5.0, "fc2": 2.0}, "grad_norm")
    assert p.select(["fc2", "fc1"]).layers == ["fc1", "fc2"]
    assert p.relabel("run").label == "run" and p.relabel("run")["norm1"] == 5.0
    with pytest.raises(ValueError, match="unknown layer"):
        p.select(["fc3"])


def test_bad_profiles():
    with pytest.raises(ValueError, match="unique"):
        Profile([("a", 1.0), ("a", 2.0)])
    with pytest.raises(ValueError, match="numbers"):
        Profile({"a": "big"})


def _trace():
    steps = np.array([0, 10, 20])
    stats = {s: np.arange(6, dtype=float).reshape(3, 2) + 1 for s in STATS}
    return Trace(steps=steps, layers=["fc1", "out"], act_layers=["act1", "act2"], stats=stats,
                 loss=np.array([2.3, 1.0, 0.5]))


def test_trace_profiles_by_step_number_or_from_the_end():
    t = _trace()
    assert t.profile("grad_norm").layers == ["fc1", "out"]
    assert list(t.profile("grad_norm", step=-1).values()) == [5.0, 6.0]
    assert list(t.profile("grad_norm", step=10).values()) == [3.0, 4.0]
    assert t.profile("act_spread", step=0).layers == ["act1", "act2"]
    assert list(t.series("grad_norm", "out")) == [2.0, 4.0, 6.0]


@pytest.mark.parametrize("call,match", [
    (lambda t: t.profile("grad_norm", step=5), "step 5 was not recorded; recorded steps: 0, 10, 20"),
    (lambda t: t.profile("grad_norm", step=-4), "before the first"),
    (lambda t: t.profile("gradnorm"), "unknown stat 'gradnorm'"),
    (lambda t: t.series("grad_norm", "act1"), "unknown layer 'act1'"),
])
def test_trace_bad_requests(call, match):
    with pytest.raises(ValueError, match=match):
        call(_trace())
