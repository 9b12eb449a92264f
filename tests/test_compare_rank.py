"""/v1/compare and /v1/rank end to end: the client against a real uvicorn gateway, real encoded videos.

Compare and rank must agree with /v1/score on the same videos (same numbers, same overall) and
with the pure math applied to those pointwise numbers.
"""

from __future__ import annotations

import json
import random

import httpx
import numpy as np
import pytest
from vrs_client import AsyncClient, Client, Frames

from models import signal
from models.spec import Pairwise
from service import pairwise, ranking
from tests import videos
from tests.conftest import SIGNAL_RK

SIGNAL_DIMS = [f"signal.{d}" for d in signal.SPEC.dimension_names]
RK_DIMS = [f"signal-rk.{d}" for d in signal.SPEC.dimension_names]


@pytest.fixture(scope="module")
def vrs(scoring_gateway):
    with Client(scoring_gateway.url, timeout_s=60) as client:
        yield client


def test_compare_agrees_with_pointwise_scores(vrs, group_mp4):
    models = ["signal", "signal-rk"]
    weights = {"signal.sharpness": 2.0, "signal-rk.exposure": 1.0, "signal-rk.contrast": 0.5}
    a, b = group_mp4[0], group_mp4[1]
    pointwise = vrs.score([a, b], models=models, weights=weights).results
    result = vrs.compare(a, b, models=models, weights=weights)
    assert result.weights == weights
    assert [r.model_dump(exclude={"cached"}) for r in result.results] == [
        r.model_dump(exclude={"cached"}) for r in pointwise
    ]
    assert all(r.cached for r in result.results)  # compare reused the pointwise scores
    for key in SIGNAL_DIMS + RK_DIMS:
        spec = SIGNAL_RK.spec.pairwise if key.startswith("signal-rk.") else signal.SPEC.pairwise
        expected = pairwise.prefer(pointwise[0].scores[key], pointwise[1].scores[key], spec)
        got = result.dimensions[key]
        assert (got.p_a_over_b, got.p_b_over_a, got.p_tie, got.winner) == (
            expected.p_a_over_b,
            expected.p_b_over_a,
            expected.p_tie,
            expected.winner,
        ), key
        assert got.pairwise == spec.model and got.theta == (5.0 if key in RK_DIMS else 1.0)
    # Two models with different pairwise specs: the overall falls back to Bradley-Terry.
    expected = pairwise.prefer(pointwise[0].overall, pointwise[1].overall, Pairwise())
    assert result.overall.pairwise == "bradley-terry" and result.overall.p_a_over_b == expected.p_a_over_b
    # The blurred video loses on sharpness, and overall since sharpness weighs most.
    assert result.dimensions["signal.sharpness"].winner == "a" and result.overall.winner == "a"


def test_compare_a_video_with_itself_gives_the_tie_identity(vrs, group_mp4):
    result = vrs.compare(group_mp4[2], group_mp4[2], models=["signal-rk"])
    assert result.results[0].scores == result.results[1].scores
    for key in RK_DIMS:
        pref = result.dimensions[key]
        assert pref.p_tie == pytest.approx(4 / 6, abs=1e-12) and pref.p_a_over_b == pytest.approx(1 / 6, abs=1e-12)
        assert pref.winner == "tie"
    assert (result.overall.pairwise, result.overall.theta, result.overall.winner) == ("rao-kupper", 5.0, "tie")
    bt = vrs.compare(group_mp4[2], group_mp4[2]).overall
    assert (bt.p_a_over_b, bt.p_b_over_a, bt.p_tie, bt.winner) == (0.5, 0.5, 0.0, "tie")


def test_rank_agrees_with_pointwise_scores(vrs, group_mp4):
    pointwise = vrs.score(group_mp4, preset="signal-spatial").results
    result = vrs.rank(group_mp4, preset="signal-spatial", top_k=2)
    overall = [r.overall for r in pointwise]
    assert [r.overall for r in result.results] == overall
    assert [r.scores for r in result.results] == [r.scores for r in pointwise]
    assert result.ranking == ranking.order(overall)[:2] and result.ranking[0] == 0  # the clean video wins
    assert sorted(r.rank for r in result.results) == [1, 2, 3, 4]
    assert [r.advantage for r in result.results] == ranking.advantages(overall)
    for key in SIGNAL_DIMS:
        assert [r.advantages[key] for r in result.results] == ranking.advantages([r.scores[key] for r in pointwise])
    adv = np.array([r.advantage for r in result.results])
    std = np.std(overall, ddof=1)
    assert adv.mean() == pytest.approx(0, abs=1e-12) and adv.std(ddof=1) == pytest.approx(std / (std + 1e-4), rel=1e-9)


def test_rank_is_permutation_invariant(vrs, group_mp4):
    base = vrs.rank(group_mp4, advantage_std="population", advantage_eps=0.0)
    by_video = {i: r for i, r in enumerate(base.results)}
    perm = [2, 0, 3, 1]
    permuted = vrs.rank([group_mp4[p] for p in perm], advantage_std="population", advantage_eps=0.0)
    assert [perm[j] for j in permuted.ranking] == base.ranking
    for j, r in enumerate(permuted.results):
        same = by_video[perm[j]]
        assert (r.rank, r.overall, r.advantage) == (same.rank, same.overall, same.advantage)
        assert r.advantages == same.advantages
    adv = np.array([r.advantage for r in base.results])
    assert adv.mean() == pytest.approx(0, abs=1e-12) and adv.std(ddof=0) == pytest.approx(1, abs=1e-12)


def test_grpo_helper_on_numpy_frames(vrs, group_frames):
    """A trainer sends raw frames (no mp4 encode) and gets advantages back as arrays, in order."""
    group = vrs.grpo_advantages(group_frames, fps=16)
    assert group.advantages.shape == (4,) and group.rewards.shape == (4,)
    assert group.advantages.mean() == pytest.approx(0, abs=1e-12)
    assert int(np.argmax(group.advantages)) == group.response.ranking[0] == 0
    assert group.dimensions["signal.sharpness"].argmin() == 1  # the blurred rollout
    pointwise = vrs.score([Frames(f, 16) for f in group_frames]).results
    assert group.rewards.tolist() == [r.overall for r in pointwise]


async def test_async_client_matches_sync(vrs, scoring_gateway, group_mp4, group_frames):
    async with AsyncClient(scoring_gateway.url, timeout_s=60) as client:
        compared = await client.compare(group_mp4[0], group_mp4[3], models=["signal-rk"], normalise=True)
        group = await client.grpo_advantages(group_frames, fps=16, advantage_std="population")
        scored = await client.score(group_mp4[:2], models=["signal-rk"], normalise=True)
    sync_compared = vrs.compare(group_mp4[0], group_mp4[3], models=["signal-rk"], normalise=True)
    sync_group = vrs.grpo_advantages(group_frames, fps=16, advantage_std="population")
    not_cached = {"results": {"__all__": {"cached"}}}  # the second call of the two hits the cache
    assert compared.model_dump(exclude=not_cached) == sync_compared.model_dump(exclude=not_cached)
    assert group.advantages.tolist() == sync_group.advantages.tolist()
    assert scored.results[0].scores == compared.results[0].scores


def test_normalise_uses_the_models_statistics(vrs, group_mp4):
    raw = vrs.score(group_mp4[:1], models=["signal-rk"]).results[0]
    normalised = vrs.score(group_mp4[:1], models=["signal-rk"], normalise=True).results[0]
    dims = {f"signal-rk.{d.name}": d for d in SIGNAL_RK.spec.dimensions}
    for key, d in dims.items():
        assert normalised.scores[key] == pytest.approx((raw.scores[key] - d.mean) / d.std, rel=1e-12)
    assert normalised.overall == pytest.approx(np.mean(list(normalised.scores.values())), rel=1e-12)
    # Pairwise probabilities stay on the raw scale the pairwise model was trained on.
    a, b = group_mp4[0], group_mp4[1]
    normalised_pair = vrs.compare(a, b, models=["signal-rk"], normalise=True)
    assert normalised_pair.dimensions == vrs.compare(a, b, models=["signal-rk"]).dimensions


def test_models_default_to_those_the_weights_name(vrs, group_mp4):
    result = vrs.score(group_mp4[:1], weights={"signal-rk.sharpness": 1.0})
    assert [m.name for m in result.models] == ["signal-rk"] and set(result.results[0].scores) == set(RK_DIMS)


def test_multipart_compare_and_rank(scoring_gateway, group_mp4):
    files = {"a": ("a.mp4", group_mp4[0]), "b": ("b.mp4", group_mp4[1])}
    fields = {"model": "signal-rk", "weights": json.dumps({"signal-rk.sharpness": 1.0})}
    compared = httpx.post(f"{scoring_gateway.url}/v1/compare", files=files, data=fields, timeout=60)
    assert compared.status_code == 200, compared.text
    body = compared.json()
    overall = body["overall"]  # sharpness differs by ~0.5: A is likelier to win, but a tie (theta 5) likelier still
    assert overall["pairwise"] == "rao-kupper" and overall["p_a_over_b"] > overall["p_b_over_a"]
    assert overall["winner"] == "tie" and body["results"][0]["overall"] > body["results"][1]["overall"]
    request = {"videos": [{"file": "b"}, {"file": "a"}], "top_k": 1}
    fields = {"request": json.dumps(request)}
    ranked = httpx.post(f"{scoring_gateway.url}/v1/rank", files=files, data=fields, timeout=60)
    assert ranked.status_code == 200, ranked.text
    assert ranked.json()["ranking"] == [1]


def test_openapi_documents_compare_and_rank(scoring_gateway):
    spec = httpx.get(f"{scoring_gateway.url}/openapi.json").json()
    for path, schema in [("/v1/compare", "CompareRequest"), ("/v1/rank", "RankRequest")]:
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}
        assert schema in spec["components"]["schemas"]
    assert "CompareResponse" in spec["components"]["schemas"] and "RankResponse" in spec["components"]["schemas"]


def test_rank_with_a_prompt_per_video(vrs, group_mp4):
    prompts = ["a cat", "a red car", "ok", "a long prompt here"]
    result = vrs.rank(group_mp4, prompts, models=["prompt-probe"])
    lengths = [len(p) + 0.017 for p in prompts]  # prompt-probe: len(prompt) + frames / 1000
    assert [r.overall for r in result.results] == pytest.approx(lengths)
    assert result.ranking == [3, 1, 0, 2]


def test_shuffled_groups_keep_per_video_advantages(vrs, group_frames):
    """Same as the permutation test, with raw frames and a random order."""
    order = list(range(4))
    random.Random(5).shuffle(order)
    base = vrs.grpo_advantages(group_frames, fps=16)
    shuffled = vrs.grpo_advantages([group_frames[i] for i in order], fps=16)
    assert shuffled.advantages.tolist() == [base.advantages[i] for i in order]


def test_compare_and_rank_after_scoring_run_no_new_inference(vrs, scoring_gateway):
    """Compare and rank reuse pointwise scores through the cache: after /v1/score, no decode, no inference."""
    clips = [videos.moving_scene(9, 96, 128, speed=s) for s in (1.5, 2.5, 3.5)]
    clips[0][:, :2, :2] = 201  # content no other test sends
    mp4s = [videos.encode(c) for c in clips]
    models = ["signal", "signal-rk"]
    first = vrs.score(mp4s, models=models).results
    assert not any(r.cached for r in first)
    engine = scoring_gateway.app.state.engine
    before = dict(engine.stats)

    compared = vrs.compare(mp4s[0], mp4s[1], models=models, weights={"signal.sharpness": 1.0})
    ranked = vrs.rank(mp4s, models=models, preset="signal-temporal")
    assert all(r.cached for r in compared.results) and all(r.cached for r in ranked.results)
    assert [r.scores for r in ranked.results] == [r.scores for r in first]
    assert {k: engine.stats[k] - before.get(k, 0) for k in ("videos_decoded", "inferences")} == {
        "videos_decoded": 0,
        "inferences": 0,
    }
