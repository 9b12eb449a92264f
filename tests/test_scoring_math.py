"""The scoring math against closed forms: pairwise probabilities, ranking, advantages, weights."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest

from models import signal
from models.spec import Dimension, Pairwise
from service import pairwise, ranking, scoring
from service.errors import BadInput

BT = Pairwise(model="bradley-terry")


def rk(theta: float) -> Pairwise:
    return Pairwise(model="rao-kupper", theta=theta)


@pytest.mark.parametrize("theta", [1.0, 1.5, 5.0, 20.0])
@pytest.mark.parametrize("reward", [-3.0, 0.0, 0.7, 40.0])
def test_equal_rewards_under_rao_kupper_give_the_theta_identity(theta, reward):
    pref = pairwise.prefer(reward, reward, rk(theta))
    assert pref.p_tie == pytest.approx((theta - 1) / (theta + 1), abs=1e-12)
    assert pref.p_a_over_b == pytest.approx(1 / (theta + 1), abs=1e-12)
    assert pref.p_b_over_a == pytest.approx(1 / (theta + 1), abs=1e-12)
    assert pref.winner == "tie"


def test_rao_kupper_matches_its_definition_in_strengths():
    rng = random.Random(0)
    for _ in range(200):
        ra, rb, theta = rng.uniform(-4, 4), rng.uniform(-4, 4), rng.uniform(1, 8)
        pa, pb = math.exp(ra), math.exp(rb)
        pref = pairwise.prefer(ra, rb, rk(theta))
        assert pref.p_a_over_b == pytest.approx(pa / (pa + theta * pb), rel=1e-12)
        assert pref.p_b_over_a == pytest.approx(pb / (pb + theta * pa), rel=1e-12)
        assert pref.p_a_over_b + pref.p_b_over_a + pref.p_tie == pytest.approx(1.0, abs=1e-12)
        assert pref.p_tie >= 0


def test_videoalign_form_sigmoid_of_difference_minus_log_theta():
    """DESIGN §4.2: P(A>B) = sigmoid(d - ln 5) for VideoAlign's theta = 5."""
    d = 1.3
    pref = pairwise.prefer(d, 0.0, rk(5.0))
    assert pref.p_a_over_b == pytest.approx(1 / (1 + math.exp(-(d - math.log(5)))), rel=1e-12)
    assert pref.p_b_over_a == pytest.approx(1 / (1 + math.exp(-(-d - math.log(5)))), rel=1e-12)


def test_bradley_terry_symmetry_and_no_ties():
    rng = random.Random(1)
    for _ in range(200):
        ra, rb = rng.uniform(-10, 10), rng.uniform(-10, 10)
        ab, ba = pairwise.prefer(ra, rb, BT), pairwise.prefer(rb, ra, BT)
        assert ab.p_a_over_b + ab.p_b_over_a == pytest.approx(1.0, abs=1e-12)
        assert ab.p_tie == 0.0
        assert ab.p_a_over_b == pytest.approx(ba.p_b_over_a, abs=1e-15)
        assert ab.p_a_over_b == pytest.approx(1 / (1 + math.exp(rb - ra)), rel=1e-12)
    # theta is ignored under Bradley-Terry; theta = 1 under Rao-Kupper is Bradley-Terry.
    assert pairwise.prefer(0.4, 0.1, Pairwise(model="bradley-terry", theta=5.0)) == pairwise.prefer(0.4, 0.1, rk(1.0))


def test_winner_rule_and_extreme_rewards():
    assert pairwise.prefer(0.5, 0.5, BT).winner == "tie"  # top probability shared by A and B
    assert pairwise.prefer(0.6, 0.5, BT).winner == "a"
    assert pairwise.prefer(0.5, 0.6, BT).winner == "b"
    assert pairwise.prefer(0.2, 0.0, rk(5.0)).winner == "tie"  # a small lead does not beat the tie
    assert pairwise.prefer(3.0, 0.0, rk(5.0)).winner == "a"
    huge = pairwise.prefer(1e4, -1e4, rk(5.0))  # no overflow
    assert (huge.p_a_over_b, huge.p_b_over_a, huge.p_tie, huge.winner) == (1.0, 0.0, 0.0, "a")


def test_overall_pairwise_spec():
    assert pairwise.shared_spec([rk(5.0), rk(5.0)]) == rk(5.0)
    assert pairwise.shared_spec([rk(5.0), BT]) == BT
    assert pairwise.shared_spec([rk(5.0), rk(2.0)]) == BT


@pytest.mark.parametrize("std, ddof", [("sample", 1), ("population", 0)])
def test_advantages_have_mean_0_and_std_1(std, ddof):
    rewards = [0.3, 1.7, -0.2, 0.9, 0.9, 4.0, 2.2, -1.1]
    adv = ranking.advantages(rewards, eps=0.0, std=std)
    assert math.fsum(adv) == pytest.approx(0.0, abs=1e-12)
    assert float(np.std(adv, ddof=ddof)) == pytest.approx(1.0, abs=1e-12)
    # the definition, against numpy
    expected = (np.array(rewards) - np.mean(rewards)) / (np.std(rewards, ddof=ddof) + 1e-4)
    np.testing.assert_allclose(ranking.advantages(rewards, eps=1e-4, std=std), expected, rtol=1e-12)


def test_sample_std_is_what_torch_and_trl_use():
    """TRL's GRPOTrainer divides by ``rewards.std()`` (torch: n - 1); that is our default."""
    rewards = [1.0, 2.0, 4.0]
    assert ranking.advantages(rewards) == ranking.advantages(rewards, 1e-4, "sample")
    assert ranking.advantages(rewards, 0.0)[2] == pytest.approx((4 - 7 / 3) / statistics.stdev(rewards), rel=1e-12)


@pytest.mark.parametrize("scale", [1e-200, 1e-320, 1e200])
def test_advantages_of_tiny_or_huge_rewards_are_finite_and_scale_free(scale):
    """Weights as small as 1e-200 are legal, so rewards can be: their squared deviations underflow
    (a ZeroDivisionError, a 500, before the fix) or, for huge ones, overflow. With eps 0 the
    advantages do not depend on the rewards' scale."""
    rewards = [0.5, 0.75, 0.0, 1.0]
    reference = ranking.advantages(rewards, eps=0.0)
    scaled = ranking.advantages([r * scale for r in rewards], eps=0.0)
    np.testing.assert_allclose(scaled, reference, rtol=1e-2 if scale < 1e-300 else 1e-12)  # subnormals: ~3 digits
    assert all(math.isfinite(a) for a in ranking.advantages([r * scale for r in rewards]))


@pytest.mark.parametrize("eps", [0.0, 1e-4])
def test_constant_group_has_zero_advantages(eps):
    assert ranking.advantages([0.1, 0.1, 0.1, 0.1], eps=eps) == [0.0] * 4
    with pytest.raises(ValueError):
        ranking.advantages([1.0])


def test_order_breaks_ties_by_input_index():
    assert ranking.order([0.5, 0.9, 0.5, 0.1, 0.9]) == [1, 4, 0, 2, 3]


def test_rank_and_advantages_are_permutation_invariant():
    rng = random.Random(2)
    rewards = [rng.gauss(0, 1) for _ in range(16)]
    base_order = ranking.order(rewards)
    base_adv = ranking.advantages(rewards)
    for _ in range(20):
        perm = list(range(16))
        rng.shuffle(perm)
        permuted = [rewards[p] for p in perm]  # position j holds video perm[j]
        order = ranking.order(permuted)
        assert [perm[j] for j in order] == base_order  # same videos in the same order
        adv = ranking.advantages(permuted)
        assert all(adv[j] == base_adv[perm[j]] for j in range(16))  # bit-identical per video


SIGNAL = signal.SPEC
NORMED = SIGNAL.model_copy(
    update={
        "name": "normed",
        "dimensions": (
            Dimension(name="q", mean=2.0, std=4.0),
            Dimension(name="err", mean=1.0, std=0.5, higher_is_better=False),
        ),
    }
)


def test_weights_resolution_and_errors():
    default = scoring.resolve_weights(None, [SIGNAL, NORMED])
    assert sum(default.values()) == pytest.approx(1.0) and default["normed.q"] == pytest.approx(0.25)
    for weights, fragment in [
        ({"signal.nope": 1.0}, "unknown dimension 'signal.nope'"),
        ({"signal.sharpness": -1.0}, "a number in [0, 1e+06]"),
        ({"signal.sharpness": float("nan")}, "a number in [0, 1e+06]"),
        ({"signal.sharpness": 1e300}, "a number in [0, 1e+06]"),
        ({"signal.sharpness": 0.0}, "at least one weight must be positive"),
    ]:
        with pytest.raises(BadInput, match="weights: ") as err:
            scoring.resolve_weights(weights, [SIGNAL])
        assert fragment in err.value.message and err.value.code == "bad_weights"
    with pytest.raises(BadInput, match="preset 'x': unknown dimension"):
        scoring.resolve_weights({"normed.q": 1.0}, [SIGNAL], field="preset 'x'")


def test_derived_dimensions_stay_out_of_the_default_weights():
    derived = NORMED.model_copy(
        update={"name": "withsum", "dimensions": (*NORMED.dimensions, Dimension(name="sum", derived=True))}
    )
    default = scoring.resolve_weights(None, [derived])
    assert "withsum.sum" not in default and sum(default.values()) == pytest.approx(1.0)
    assert scoring.resolve_weights({"withsum.sum": 1.0}, [derived]) == {"withsum.sum": 1.0}  # still weighable by name


def test_presets_and_models_named():
    presets = {"q": {"normed.q": 1.0, "signal.sharpness": 2.0}}
    assert scoring.preset_weights("q", presets) == presets["q"]
    assert scoring.models_named(presets["q"]) == ["normed", "signal"]
    with pytest.raises(BadInput, match="preset: unknown preset 'nope'; known: q") as err:
        scoring.preset_weights("nope", presets)
    assert err.value.code == "unknown_preset"


def test_normalisation_orientation_and_overall():
    raw = {"normed.q": 6.0, "normed.err": 2.0}
    shown = scoring.normalise(raw, [NORMED])
    assert shown == {"normed.q": 1.0, "normed.err": 2.0}
    rewards = scoring.oriented(shown, [NORMED])
    assert rewards == {"normed.q": 1.0, "normed.err": -2.0}  # lower-is-better counts against
    assert scoring.overall(rewards, {"normed.q": 1.0, "normed.err": 0.5}) == pytest.approx(0.0)
    with pytest.raises(BadInput, match="normalise: no mean/std .* signal.sharpness") as err:
        scoring.normalise({"signal.sharpness": 0.5}, [SIGNAL])
    assert err.value.code == "cannot_normalise"


def test_flatten_keys_scores_by_model_dimension():
    flat = scoring.flatten({"normed": np.array([1.5, 2.5], dtype=np.float32)}, [NORMED])
    assert flat == {"normed.q": 1.5, "normed.err": 2.5}
