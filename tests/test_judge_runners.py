"""Both judge runners on a real model: a tiny Qwen2-VL / Qwen2.5-VL checkpoint built here (random weights, so
its text is noise) run in-process, and the same model behind a real OpenAI-compatible server
(uvicorn, ``tests/openai_upstream.py``) reached by the HTTP runner. The tests assert the plumbing:
both runners give the same text and log-probabilities for the same input; the yes/no score equals
the two-way softmax of the model's own next-token logits; noise is a typed error with the raw
text; retries honour 429 + Retry-After and 503s; the concurrency bound holds; failures are typed.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from models.judges import JUDGES, unifiedreward, videoscore2
from models.judges.runner import build_request, judge, judge_pair
from models.judges.spec import Generation, JudgeAnswerError, TokenLogprob, UpstreamRejected, UpstreamUnavailable
from models.judges.transformers_runner import TransformersRunner
from service.judge_backend import JudgeBackend, JudgeItem, JudgeUpstream
from service.judge_client import OpenAIChatRunner, jpeg_base64
from tests import videos
from tests.conftest import free_port
from tests.judge_checkpoints import qwen2vl_judge
from tests.openai_upstream import Streamed, Upstream, decode_jpeg, serving

MODEL = "tiny-judge"


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def judge_dir(request, tmp_path_factory) -> Path:
    """VideoAlign is Qwen2-VL; VideoScore2 and Cosmos-Reason1 are Qwen2.5-VL (window attention, timed video rope)."""
    return qwen2vl_judge(Path(tmp_path_factory.mktemp("judge")) / request.param, arch=request.param)


@pytest.fixture(scope="module")
def local(judge_dir: Path) -> TransformersRunner:
    return TransformersRunner.load(judge_dir)


@pytest.fixture(scope="module")
def upstream(local: TransformersRunner) -> Iterator[tuple[Upstream, str]]:
    with serving(local, MODEL) as served:
        yield served


@pytest.fixture()
def fresh(upstream):
    """The upstream with no faults queued and its counters reset."""
    server, url = upstream
    server.faults.clear()
    server.replies.clear()
    server.arrivals.clear()
    server.authorizations.clear()
    server.max_in_flight = 0
    server.hold_s = 0.0
    yield server, url
    server.faults.clear()
    server.replies.clear()


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return videos.moving_scene(4, 56, 84)


def jpeg_roundtrip(frames: np.ndarray) -> np.ndarray:
    """What the upstream decodes from the HTTP runner's JPEGs."""
    return np.stack([decode_jpeg(jpeg_base64(f)) for f in frames])


def tiny(judge_, **generation):
    """The judge asking the tiny model (its served name), with generation overrides."""
    spec = judge_.spec
    return type(judge_)(
        spec=spec.model_copy(
            update={"upstream_model": MODEL, "generation": spec.generation.model_copy(update=generation)}
        ),
        parse=judge_.parse,
        parse_pair=judge_.parse_pair,
    )


@pytest.mark.parametrize(
    "name, generation",
    [
        ("videoscore2", {"max_tokens": 12}),  # video, logprobs (top 20)
        ("unifiedreward", {"max_tokens": 12}),  # 4 images, text only
        ("yes-no", {"max_tokens": 3, "top_logprobs": 5}),  # system prompt, video, logprobs
    ],
)
async def test_http_and_in_process_runners_give_the_same_answer(local, fresh, frames, name, generation):
    server, url = fresh
    j = tiny(JUDGES[name], **generation)
    async with OpenAIChatRunner(url) as remote:
        over_http = await remote.generate(build_request(j.spec, frames, "a fox in the snow"))
    in_process = await local.generate(build_request(j.spec, jpeg_roundtrip(frames), "a fox in the snow"))

    seen = server.last  # what the upstream decoded from the wire
    assert (
        seen.model == MODEL and seen.text == j.spec.render("a fox in the snow") and seen.system == j.spec.system_prompt
    )
    assert seen.params == j.spec.generation
    if j.spec.frames_as == "video":
        assert seen.images == () and np.array_equal(seen.video, jpeg_roundtrip(frames))
    else:
        assert seen.video is None and np.array_equal(np.stack(seen.images), jpeg_roundtrip(frames))

    assert over_http.text == in_process.text and over_http.text  # the noise of a random model, but the same noise
    if j.spec.generation.wants_logprobs:
        assert len(over_http.tokens) == len(in_process.tokens) > 0
        for a, b in zip(over_http.tokens, in_process.tokens):
            assert a.token == b.token and a.logprob == pytest.approx(b.logprob, abs=1e-6)
            assert a.top.keys() == b.top.keys()
            assert all(a.top[k] == pytest.approx(b.top[k], abs=1e-6) for k in a.top)
    else:
        assert over_http.tokens is None and in_process.tokens is None


async def test_yes_no_score_is_the_softmax_of_the_models_own_yes_no_logits(local, fresh, frames):
    """End to end through HTTP, against one plain forward of the model (Cosmos' computation)."""
    _, url = fresh
    vocab = len(local.tokenizer)
    j = tiny(JUDGES["yes-no"], top_logprobs=vocab)  # every token's logprob, so both answers are there
    async with OpenAIChatRunner(url) as remote:
        out = await judge(remote, j, frames)

    inputs = local._inputs(build_request(j.spec, jpeg_roundtrip(frames), ""))
    with torch.no_grad():
        logits = local.model(**inputs).logits[0, -1]
    yes, no = (local.tokenizer.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    expected = float(torch.softmax(torch.stack([logits[yes], logits[no]]).double(), 0)[1])
    assert out.scores == {"no_anomaly": pytest.approx(expected, abs=1e-5)}
    assert 0.0 < out.scores["no_anomaly"] < 1.0
    local_out = await judge(local, j, jpeg_roundtrip(frames))
    assert local_out.scores["no_anomaly"] == pytest.approx(out.scores["no_anomaly"], abs=1e-6)


async def test_noise_is_a_typed_error_carrying_the_raw_text(local, fresh, frames):
    _, url = fresh
    j = tiny(videoscore2.make(), max_tokens=10)
    expected = (await local.generate(build_request(j.spec, jpeg_roundtrip(frames), "a cat"))).text
    async with OpenAIChatRunner(url) as remote:
        with pytest.raises(JudgeAnswerError) as caught:
            await judge(remote, j, frames, "a cat")
    assert caught.value.raw_text == expected and caught.value.judge == "videoscore2"
    assert "visual quality" in caught.value.reason


async def test_pairwise_sends_eight_frames_of_each_video(local, fresh):
    server, url = fresh
    a, b = videos.moving_scene(16, 28, 28), videos.moving_scene(16, 28, 28, speed=5.0)
    j = tiny(unifiedreward.make(), max_tokens=8)
    async with OpenAIChatRunner(url) as remote:
        with pytest.raises(JudgeAnswerError) as caught:  # a random model does not write the format
            await judge_pair(remote, j, a, b, "a cat")
    assert caught.value.raw_text
    sent = np.stack(server.last.images)
    assert sent.shape == (16, 28, 28, 3) and server.last.text == j.spec.render_pair("a cat")
    assert np.array_equal(sent[:8], jpeg_roundtrip(a[::2])) and np.array_equal(sent[8:], jpeg_roundtrip(b[::2]))


async def test_429_with_retry_after_then_success(fresh, frames):
    server, url = fresh
    server.faults.append((429, {"Retry-After": "1"}))
    j = tiny(JUDGES["yes-no"], max_tokens=1)
    async with OpenAIChatRunner(url, backoff_s=0.01) as remote:
        generation = await remote.generate(build_request(j.spec, frames, ""))
    assert generation.text and len(server.arrivals) == 2
    assert server.arrivals[1] - server.arrivals[0] >= 0.9  # waited as told, not the 10 ms backoff


async def test_503s_are_retried_until_an_answer(fresh, frames):
    server, url = fresh
    server.faults.extend([(503, {}), (502, {})])
    j = tiny(JUDGES["unifiedreward"], max_tokens=2)
    async with OpenAIChatRunner(url, max_attempts=3, backoff_s=0.01) as remote:
        generation = await remote.generate(build_request(j.spec, frames, "a cat"))
    assert generation.text and len(server.arrivals) == 3


async def test_503s_past_the_attempts_are_upstream_unavailable(fresh, frames):
    server, url = fresh
    server.faults.extend([(503, {})] * 3)
    j = tiny(JUDGES["unifiedreward"], max_tokens=2)
    async with OpenAIChatRunner(url, max_attempts=3, backoff_s=0.01) as remote:
        with pytest.raises(UpstreamUnavailable) as caught:
            await remote.generate(build_request(j.spec, frames, "a cat"))
    assert caught.value.status == 503 and caught.value.attempts == 3 and len(server.arrivals) == 3


async def test_an_unknown_model_is_rejected_at_once(fresh, frames):
    server, url = fresh
    j = tiny(JUDGES["unifiedreward"], max_tokens=2)
    wrong = type(j)(spec=j.spec.model_copy(update={"upstream_model": "not-served"}), parse=j.parse)
    async with OpenAIChatRunner(url, max_attempts=4, backoff_s=0.01) as remote:
        with pytest.raises(UpstreamRejected, match="404") as caught:
            await judge(remote, wrong, frames, "a cat")
    assert caught.value.status == 404 and len(server.arrivals) == 1  # a 4xx is not retried


async def test_an_upstream_that_is_down_is_upstream_unavailable(frames):
    j = tiny(JUDGES["unifiedreward"], max_tokens=2)
    async with OpenAIChatRunner(f"http://127.0.0.1:{free_port()}", max_attempts=2, backoff_s=0.01) as remote:
        with pytest.raises(UpstreamUnavailable, match="ConnectError") as caught:
            await judge(remote, j, frames, "a cat")
    assert caught.value.attempts == 2 and caught.value.status is None


async def test_concurrency_to_one_upstream_is_bounded(fresh, frames):
    server, url = fresh
    server.hold_s = 0.2
    j = tiny(JUDGES["unifiedreward"], max_tokens=1)
    async with OpenAIChatRunner(url, max_concurrency=2) as remote:
        answers = await asyncio.gather(*(remote.generate(build_request(j.spec, frames, f"cat {i}")) for i in range(6)))
    assert len(answers) == 6 and len(server.arrivals) == 6
    assert server.max_in_flight == 2  # never more than the bound, and the bound is used


async def test_credentials_in_the_url_go_as_basic_auth_and_into_no_message(fresh, frames):
    server, url = fresh
    secret = "pa:ss@word"
    host = url.removeprefix("http://")
    j = tiny(JUDGES["unifiedreward"], max_tokens=1)
    async with OpenAIChatRunner(f"http://judge-user:pa%3Ass%40word@{host}/v1", max_attempts=1) as remote:
        assert remote.base_url == url
        assert (await remote.generate(build_request(j.spec, frames, "a cat"))).text
        assert server.authorizations == ["Basic " + base64.b64encode(f"judge-user:{secret}".encode()).decode()]
        server.faults.append((503, {}))
        with pytest.raises(UpstreamUnavailable) as caught:
            await remote.generate(build_request(j.spec, frames, "a cat"))
    assert url in str(caught.value) and "word" not in str(caught.value) and "judge-user" not in str(caught.value)
    with pytest.raises(ValueError, match="one of them"):
        OpenAIChatRunner(f"http://u:p@{host}", api_key="key")


async def test_a_try_is_bounded_by_timeout_s_however_slowly_the_answer_trickles(fresh, frames):
    server, _ = fresh
    completion = b'{"choices": [{"message": {"content": "No"}}]}'
    trickle = Streamed(b" ", count=15, pause_s=0.2, tail=completion)  # a byte per 0.2 s: each read is quick
    server.replies.append(trickle.response())
    j = tiny(JUDGES["unifiedreward"], max_tokens=1)
    async with OpenAIChatRunner(fresh[1], max_attempts=1, timeout_s=1.0) as remote:
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable, match="no answer within 1 s"):
            await remote.generate(build_request(j.spec, frames, "a cat"))
    assert time.monotonic() - started < 2.5 and trickle.sent < 15


async def test_an_answer_past_max_answer_bytes_is_rejected_unread_and_error_bodies_are_read_in_part(fresh, frames):
    server, url = fresh
    mib = b" " * 1024**2
    # 1 MiB per 50 ms: the count when the runner gives up says how much it read (a server may go on
    # making a body nobody reads: uvicorn drops what is sent after a disconnect)
    huge = Streamed(mib, count=64, pause_s=0.05, tail=b'{"choices": [{"message": {"content": "No"}}]}')
    server.replies.append(huge.response())
    j = tiny(JUDGES["unifiedreward"], max_tokens=1)
    async with OpenAIChatRunner(url, max_attempts=1, max_answer_bytes=2 * 1024**2) as remote:
        with pytest.raises(UpstreamRejected, match="max_answer_bytes") as caught:
            await remote.generate(build_request(j.spec, frames, "a cat"))
        assert caught.value.status == 200 and huge.sent < 32  # stopped reading at the cap
        error = Streamed(b"x" * 1024**2, count=64, pause_s=0.05, status=503)
        server.replies.append(error.response())
        with pytest.raises(UpstreamUnavailable, match="HTTP 503: x") as down:
            await remote.generate(build_request(j.spec, frames, "a cat"))
        assert len(str(down.value)) < 1000 and error.sent < 32
        assert (await remote.generate(build_request(j.spec, frames, "a cat"))).text  # a fresh connection


async def test_judges_on_one_server_share_one_bound_the_smallest_and_keep_their_own_retries(fresh, frames):
    server, url = fresh
    server.hold_s = 0.2
    backend = JudgeBackend.from_config(
        {
            "yes-no": JudgeUpstream(url=f"{url}/v1", model=MODEL, max_concurrency=4, max_attempts=1),
            "unifiedreward": JudgeUpstream(url=url, model=MODEL, max_concurrency=2, max_attempts=2, max_tokens=1),
            "videoscore2": JudgeUpstream(url=f"{url}/v1/", model=MODEL, max_concurrency=8, max_tokens=1),
        }
    )
    try:
        assert [backend.concurrency(n) for n in backend.names] == [2, 2, 2]
        items = [JudgeItem(frames, f"a fox {i}") for i in range(3)]
        done = await asyncio.gather(*(backend.score(name, items) for name in backend.names))
        assert sum(len(d) for d in done) == 9 and len(server.arrivals) == 9
        assert server.max_in_flight == 2
        server.hold_s = 0.0
        server.faults.append((503, {}))  # unifiedreward tries twice: the second answers
        (answered,) = await backend.score("unifiedreward", items[:1])
        assert not isinstance(answered, UpstreamUnavailable)
        server.faults.append((503, {}))  # yes-no tries once
        (down,) = await backend.score("yes-no", items[:1])
        assert isinstance(down, UpstreamUnavailable) and down.attempts == 1
    finally:
        await backend.aclose()


async def test_judge_backend_answers_every_item_with_scores_or_its_own_error(judge_dir, local, fresh, frames):
    _, url = fresh
    backend = JudgeBackend.from_config(
        {
            "yes-no": JudgeUpstream(url=url, model=MODEL, max_attempts=1),
            "videoscore2": JudgeUpstream(directory=judge_dir),
            "unifiedreward": JudgeUpstream(url=f"http://127.0.0.1:{free_port()}", max_attempts=1),  # down
        }
    )
    try:
        assert backend.spec("yes-no").upstream_model == MODEL and backend.names == [
            "yes-no",
            "videoscore2",
            "unifiedreward",
        ]
        items = [JudgeItem(frames, "a fox"), JudgeItem(frames[::-1].copy(), "a dog")]

        got = await backend.score("yes-no", items)
        async with OpenAIChatRunner(url) as remote:
            for item, result in zip(items, got):
                try:
                    expected = await judge(remote, tiny(JUDGES["yes-no"]), item.frames, item.prompt)
                except JudgeAnswerError as exc:
                    assert isinstance(result, JudgeAnswerError) and result.raw_text == exc.raw_text
                else:
                    assert result.scores == pytest.approx(expected.scores) and result.raw_text == expected.raw_text

        noise = await backend.score("videoscore2", items)  # in process; a random model writes no scores
        assert [type(r) for r in noise] == [JudgeAnswerError, JudgeAnswerError]
        assert (
            noise[0].raw_text
            == (await local.generate(build_request(backend.spec("videoscore2"), frames, "a fox"))).text
        )

        down = await backend.score("unifiedreward", items)
        assert [type(r) for r in down] == [UpstreamUnavailable, UpstreamUnavailable]
    finally:
        await backend.aclose()
    with pytest.raises(ValueError, match="unknown judges"):
        JudgeBackend.from_config({"gpt-judge": JudgeUpstream(url=url)})
    with pytest.raises(ValueError, match="exactly one"):
        JudgeUpstream(url=url, directory=judge_dir)
    with pytest.raises(ValueError, match="one of them"):
        JudgeUpstream(url="http://user:pass@gpu:8001", api_key="key")
    with pytest.raises(ValueError, match="names a host"):
        JudgeUpstream(url="gpu:8001/v1")


async def test_videoscore2_soft_scores_from_the_models_own_logprobs_on_a_forced_answer(local, frames):
    """Teacher forcing: a well-formed answer, tokenised by the model's tokenizer, and the model's real
    next-token log-probabilities along it. The parser must find each score digit among the real
    token pieces and return the expectation over the digit tokens there, computed here by brute
    force over the vocabulary (the reference's softmax over the digit logits)."""
    spec = tiny(JUDGES["videoscore2"]).spec
    inputs = local._inputs(build_request(spec, frames, "a cat"))
    answer = "visual quality: 4; text-to-video alignment: 3, physical/common-sense consistency: 5"
    answer_ids = local.tokenizer.encode(answer, add_special_tokens=False)
    prompt_len = inputs["input_ids"].shape[1]
    ids = torch.cat([inputs["input_ids"], torch.tensor([answer_ids])], 1)
    types = torch.cat([inputs["mm_token_type_ids"], torch.zeros((1, len(answer_ids)), dtype=torch.int)], 1)
    with torch.no_grad():
        logits = (
            local.model(
                **{**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types}
            )
            .logits[0, prompt_len - 1 : -1]
            .double()
        )
    logprobs = torch.log_softmax(logits, -1)
    vocab = [local.tokenizer.decode([j]) for j in range(logprobs.shape[1])]
    pieces = [vocab[i] for i in answer_ids]
    assert "".join(pieces) == answer
    generation = Generation(
        text=answer,
        tokens=tuple(
            TokenLogprob(
                p, float(logprobs[k, i]), {v: float(logprobs[k, j]) for j, v in reversed(list(enumerate(vocab)))}
            )
            for k, (p, i) in enumerate(zip(pieces, answer_ids))
        ),
    )
    scores = JUDGES["videoscore2"].parse(generation)

    digit_positions = [k for k, p in enumerate(pieces) if p.strip() in {"4", "3", "5"}]
    assert len(digit_positions) == 3
    for dim, k in zip(["visual_quality", "text_alignment", "physical_consistency"], digit_positions):
        mass = {
            s: sum(float(logprobs[k, j].exp()) for j, v in enumerate(vocab) if v.strip() == str(s)) for s in range(1, 6)
        }
        expected = sum(s * m for s, m in mass.items()) / sum(mass.values())
        assert scores[dim] == pytest.approx(expected, rel=1e-9)
