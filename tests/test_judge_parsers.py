"""Judge parsers on the answer formats of the judges' own repos, well-formed and malformed; the
soft-score math against the reference computations; the spec fingerprint; request building."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.judges import JUDGES, unifiedreward, videoscore2, yesno
from models.judges.runner import build_pair_request, build_request
from models.judges.spec import Generation, JudgeAnswerError, JudgeSpec, TokenLogprob, UpstreamRejected
from service.judge_client import MAX_RETRY_AFTER_S, chat_payload, parse_completion, retry_after_s

VS2 = JUDGES["videoscore2"]
UR = JUDGES["unifiedreward"]
COSMOS = JUDGES["yes-no"]


def text(answer: str) -> Generation:
    return Generation(text=answer)


def tokens(*pieces: tuple[str, dict[str, float] | None]) -> Generation:
    """A generation from (token, top alternatives as probabilities) pieces; None = certain token."""
    out = []
    for piece, top in pieces:
        top = top or {piece: 1.0}
        out.append(
            TokenLogprob(
                token=piece, logprob=math.log(top.get(piece, 1e-9)), top={k: math.log(v) for k, v in top.items()}
            )
        )
    return Generation(text="".join(p for p, _ in pieces), tokens=tuple(out))


# ---- VideoScore2 ---------------------------------------------------------------------------

# The format its prompt asks for (vs2_inference.py), and the numbered one of its SFT data.
VS2_ANSWER = "visual quality: 4; \ntext-to-video alignment: 3, \nphysical/common-sense consistency: 5"
VS2_NUMBERED = (
    "### Score:\n(1) visual quality: 2\n(2) text-to-video alignment: 5\n(3) physical/common-sense consistency: 1"
)


def test_videoscore2_reads_its_answer_formats():
    assert VS2.parse(text(VS2_ANSWER)) == {"visual_quality": 4.0, "text_alignment": 3.0, "physical_consistency": 5.0}
    assert VS2.parse(text(VS2_NUMBERED)) == {"visual_quality": 2.0, "text_alignment": 5.0, "physical_consistency": 1.0}
    shouted = "Visual Quality: 3; Text-to-Video Alignment: 2, Physical/Common-Sense Consistency: 4"
    assert VS2.parse(text(shouted)) == {"visual_quality": 3.0, "text_alignment": 2.0, "physical_consistency": 4.0}


def test_videoscore2_reads_the_answer_after_the_reasoning():
    thought = (
        "<think>The visual quality: 1 at first glance, but the motion is smooth; "
        "text-to-video alignment: 2?</think>\n" + VS2_ANSWER + "\nDone."
    )
    assert VS2.parse(text(thought)) == {"visual_quality": 4.0, "text_alignment": 3.0, "physical_consistency": 5.0}


@pytest.mark.parametrize(
    "answer, reason",
    [
        ("visual quality: 4; text-to-video alignment: 3", "physical/common-sense consistency"),  # a dimension missing
        ("visual quality: 7; text-to-video alignment: 3, physical/common-sense consistency: 5", "outside [1.0, 5.0]"),
        ("visual quality: 0; text-to-video alignment: 3, physical/common-sense consistency: 5", "outside [1.0, 5.0]"),
        ("visual quality: four; text-to-video alignment: 3, physical/common-sense consistency: 5", "visual quality"),
        (
            "<think>visual quality: 4; text-to-video alignment: 3, physical/common-sense consistency: 5 hmm",
            "unclosed <think>",
        ),
        ("", "visual quality"),
    ],
)
def test_videoscore2_rejects_malformed_answers_with_the_raw_text(answer, reason):
    with pytest.raises(JudgeAnswerError, match="videoscore2") as caught:
        VS2.parse(text(answer))
    assert reason in caught.value.reason
    assert caught.value.raw_text == answer


def _vs2_tokens(digit_tops: list[dict[str, float]]) -> Generation:
    """The answer tokenised as Qwen does (digits alone), with the given alternatives at each score digit."""
    (v, t, p) = digit_tops

    def chosen(top):
        return max(top, key=top.get)

    return tokens(
        ("visual", None),
        (" quality", None),
        (":", None),
        (" ", None),
        (chosen(v), v),
        (";", None),
        (" \n", None),
        ("text", None),
        ("-to-video alignment", None),
        (":", None),
        (" ", None),
        (chosen(t), t),
        (",", None),
        (" \n", None),
        ("physical/common-sense consistency", None),
        (":", None),
        (" ", None),
        (chosen(p), p),
    )


def test_videoscore2_soft_score_is_the_expectation_over_the_digit_probabilities():
    v = {"4": 0.6, "3": 0.3, "5": 0.05, "the": 0.05}  # non-digit mass is left out, the rest renormalised
    t = {"2": 0.5, " 2": 0.2, "1": 0.3}  # " 2" and "2" are the same score
    p = {"5": 0.99, "4": 0.01}
    scores = VS2.parse(_vs2_tokens([v, t, p]))
    assert scores["visual_quality"] == pytest.approx((4 * 0.6 + 3 * 0.3 + 5 * 0.05) / 0.95)
    assert scores["text_alignment"] == pytest.approx(2 * 0.7 + 1 * 0.3)
    assert scores["physical_consistency"] == pytest.approx(5 * 0.99 + 4 * 0.01)
    normed = videoscore2.make(soft="normed").parse(_vs2_tokens([v, t, p]))
    assert normed["visual_quality"] == pytest.approx(4 * 0.6 / 0.95)  # the model card's variant


def test_videoscore2_soft_score_equals_the_reference_softmax_over_digit_logits():
    """vs2_float_weighted.py: softmax over the logits of the tokens "1".."5" at the score position,
    then sum(s * p). From full-vocabulary log-probabilities the renormalised masses are the same."""
    torch.manual_seed(0)
    vocab = ["1", "2", "3", "4", "5", "a", "b", ";", " x"]
    for _ in range(5):
        logits = torch.randn(len(vocab), dtype=torch.float64) * 3
        reference = float((torch.softmax(logits[:5], 0) * torch.arange(1, 6)).sum())
        logprobs = torch.log_softmax(logits, 0)
        top = {tok: float(lp) for tok, lp in zip(vocab, logprobs)}
        digit = vocab[int(logits[:5].argmax())]
        generation = Generation(
            text=f"visual quality: {digit}; text-to-video alignment: {digit}, physical/common-sense consistency: {digit}",
            tokens=tuple(
                TokenLogprob(token=piece, logprob=top.get(piece, 0.0), top=top if piece == digit else {piece: 0.0})
                for piece in [
                    "visual quality: ",
                    digit,
                    "; text-to-video alignment: ",
                    digit,
                    ", physical/common-sense consistency: ",
                    digit,
                ]
            ),
        )
        assert VS2.parse(generation)["visual_quality"] == pytest.approx(reference, abs=1e-9)


def test_videoscore2_soft_score_needs_a_digit_among_the_alternatives():
    g = _vs2_tokens([{"4": 1.0}, {"2": 1.0}, {"5": 1.0}])
    broken = list(g.tokens)
    broken[4] = TokenLogprob(token="4", logprob=-0.1, top={"x": -0.1})  # an upstream that dropped the digit's mass
    with pytest.raises(JudgeAnswerError, match="digit 1-5"):
        VS2.parse(Generation(text=g.text, tokens=tuple(broken)))


# ---- UnifiedReward-2.0 ---------------------------------------------------------------------

UR_POINT = (
    "Alignment Score (1-5): 2.4036\nPhysics Score (1-5): 3.0987\nStyle Score (1-5): 3.3889"  # the authors' example
)
UR_PAIR = (
    "Alignment Score:\n Video 1: 0.4736\n Video 2: 0.5264\n\nCoherence Score:\n Video 1: 0.5981\n Video 2: 0.4019\n\n"
    "Style Score:\n Video 1: 0.3484\n Video 2: 0.6516\n"
)  # the authors' example


def test_unifiedreward_pointwise_reads_the_authors_example():
    assert UR.parse(text(UR_POINT)) == {"alignment": 2.4036, "physics": 3.0987, "style": 3.3889}
    chatty = "Sure! Here is my evaluation.\n\nalignment score (1-5): 4\nphysics score (1-5): 2\nstyle score (1-5): 5\nThanks."
    assert UR.parse(text(chatty)) == {"alignment": 4.0, "physics": 2.0, "style": 5.0}
    assert UR.parse(text("<think>Alignment Score (1-5): 1</think>" + UR_POINT))["alignment"] == 2.4036


@pytest.mark.parametrize(
    "answer, reason",
    [
        ("Alignment Score (1-5): 3\nPhysics Score (1-5): 2", "Style"),
        ("Alignment Score (1-5): 6.2\nPhysics Score (1-5): 2\nStyle Score (1-5): 3", "outside"),
        ("Alignment Score (1-5): X\nPhysics Score (1-5): Y\nStyle Score (1-5): Z", "Alignment"),  # the template echoed
        (UR_PAIR, "Alignment"),  # a pairwise answer is not a pointwise one
    ],
)
def test_unifiedreward_pointwise_rejects_malformed_answers(answer, reason):
    with pytest.raises(JudgeAnswerError) as caught:
        UR.parse(text(answer))
    assert reason in caught.value.reason and caught.value.raw_text == answer


def test_unifiedreward_pairwise_reads_the_authors_example():
    scores = UR.parse_pair(text(UR_PAIR))
    assert scores["alignment"] == pytest.approx((0.4736, 0.5264))
    assert scores["coherence"] == pytest.approx((0.5981, 0.4019))
    assert scores["style"] == pytest.approx((0.3484, 0.6516))
    assert all(a + b == pytest.approx(1.0) for a, b in scores.values())


@pytest.mark.parametrize(
    "answer, reason",
    [
        (UR_PAIR.replace("0.3484", "0.7484"), "do not sum to 1"),
        (UR_PAIR.replace("Coherence", "Physics"), "Coherence"),
        (UR_PAIR.replace("0.5981", "1.5981").replace("0.4019", "-0.5981"), "outside"),
        (UR_POINT, "Alignment"),
    ],
)
def test_unifiedreward_pairwise_rejects_malformed_answers(answer, reason):
    with pytest.raises(JudgeAnswerError) as caught:
        UR.parse_pair(text(answer))
    assert reason in caught.value.reason


# ---- yes/no (Cosmos-Reason1 reward) ----------------------------------------------------------


def test_yes_no_is_the_two_way_softmax_of_the_answer_logits():
    """cosmos_reason1.py: softmax([logit(Yes), logit(No)])[1]. Log-softmax over the vocabulary
    shifts both logits equally, so the logprobs give the same number. Only the exact tokens
    count: "yes" and " Yes" are other tokens, as in the reference (token ids of "Yes" / "No")."""
    torch.manual_seed(1)
    vocab = ["Yes", "No", "The", "yes", " Yes"]
    for _ in range(5):
        logits = torch.randn(len(vocab), dtype=torch.float64) * 4
        reference = float(torch.softmax(torch.stack([logits[0], logits[1]]), 0)[1])
        top = {tok: float(lp) for tok, lp in zip(vocab, torch.log_softmax(logits, 0))}
        first = vocab[int(logits.argmax())]
        generation = Generation(text=first, tokens=(TokenLogprob(token=first, logprob=top[first], top=top),))
        assert COSMOS.parse(generation) == {"no_anomaly": pytest.approx(reference, abs=1e-9)}
    only_two = {"Yes": math.log(0.2), "No": math.log(0.6)}
    g = Generation(text="No", tokens=(TokenLogprob("No", math.log(0.6), only_two),))
    assert COSMOS.parse(g)["no_anomaly"] == pytest.approx(0.75)


def test_yes_no_reads_the_first_word_without_logprobs():
    assert COSMOS.parse(text("No")) == {"no_anomaly": 1.0}
    assert COSMOS.parse(text("Yes. The ball floats upwards.")) == {"no_anomaly": 0.0}
    assert COSMOS.parse(text("no, it looks physically plausible")) == {"no_anomaly": 1.0}
    assert COSMOS.parse(text("<think>Is there an anomaly? Yes maybe.</think>\n**No**")) == {"no_anomaly": 1.0}
    for bad in ("Maybe.", "", "Nope", "<think>Yes"):
        with pytest.raises(JudgeAnswerError):
            COSMOS.parse(text(bad))


def test_yes_no_without_either_answer_among_the_alternatives_is_an_error():
    g = Generation(text="The", tokens=(TokenLogprob("The", -0.1, {"The": -0.1, "A": -2.5}),))
    with pytest.raises(JudgeAnswerError, match="no probability"):
        COSMOS.parse(g)


def test_yes_no_question_and_rewarded_answer_are_configurable():
    judge = yesno.make(
        question="Does this video show {prompt}? Answer Yes or No.",
        system_prompt=None,
        rewarded="Yes",
        dimension="on_topic",
        upstream_model="my-vlm",
    )
    assert (
        judge.spec.needs_prompt
        and judge.spec.render("a red car") == "Does this video show a red car? Answer Yes or No."
    )
    g = Generation(
        text="Yes", tokens=(TokenLogprob("Yes", math.log(0.9), {"Yes": math.log(0.9), "No": math.log(0.1)}),)
    )
    assert judge.parse(g) == {"on_topic": pytest.approx(0.9)}
    assert not COSMOS.spec.needs_prompt and COSMOS.spec.system_prompt.endswith('"Yes" or "No".')
    with pytest.raises(ValueError):
        yesno.make(rewarded="Maybe")


# ---- spec: fingerprint and validation ----------------------------------------------------------


def test_fingerprint_is_stable_and_covers_every_ingredient():
    spec = videoscore2.make_spec()
    assert spec.fingerprint() == videoscore2.make_spec().fingerprint()
    assert len({j.spec.fingerprint() for j in JUDGES.values()}) == len(JUDGES)
    gen = spec.generation
    changed = [
        spec.model_copy(update={"prompt_template": spec.prompt_template + " "}),
        spec.model_copy(update={"system_prompt": "You are a judge."}),
        spec.model_copy(update={"upstream_model": "VideoScore2-awq"}),
        spec.model_copy(update={"generation": gen.model_copy(update={"temperature": 0.7})}),
        spec.model_copy(update={"generation": gen.model_copy(update={"max_tokens": 512})}),
        spec.model_copy(update={"generation": gen.model_copy(update={"top_logprobs": 0})}),
        spec.model_copy(update={"version": "2"}),
        spec.model_copy(update={"frames_as": "images"}),
        spec.model_copy(update={"sampling": spec.sampling.model_copy(update={"fps": 1.0})}),
        spec.model_copy(update={"resolution": spec.resolution.model_copy(update={"max_pixels": 448 * 448})}),
    ]
    prints = {s.fingerprint() for s in changed}
    assert len(prints) == len(changed) and spec.fingerprint() not in prints
    # Documentation is not an ingredient.
    assert spec.model_copy(update={"description": "other words"}).fingerprint() == spec.fingerprint()


def test_spec_validation():
    with pytest.raises(ValueError, match="placeholder"):
        JudgeSpec.model_validate({**videoscore2.make_spec().model_dump(), "prompt_template": "no placeholder"})
    data = unifiedreward.make_spec().model_dump()
    data["pairwise_frames"] = None
    with pytest.raises(ValueError, match="pairwise"):
        JudgeSpec.model_validate(data)
    assert "Video prompt: {x} braces\n" in videoscore2.make_spec().render("{x} braces")


# ---- requests and the wire format ------------------------------------------------------------


def test_requests_carry_images_or_a_video_and_pairs_take_eight_frames_each():
    frames = np.arange(16 * 4 * 4 * 3, dtype=np.int64).reshape(16, 4, 4, 3).astype(np.uint8)
    point = build_request(UR.spec, frames, "a cat")
    assert len(point.images) == 16 and point.video is None and point.text.endswith("Text Caption: [a cat]")
    video = build_request(VS2.spec, frames, "a cat", fps=8.0)
    assert video.images == () and video.video.shape == (16, 4, 4, 3) and video.video_fps == 8.0
    cosmos = build_request(COSMOS.spec, frames, "")
    assert cosmos.system == yesno.COSMOS_SYSTEM_PROMPT and cosmos.text == yesno.COSMOS_QUESTION
    a, b = frames, frames[::-1].copy()
    pair = build_pair_request(UR.spec, a, b, "a cat")
    assert len(pair.images) == 16
    assert all((pair.images[i] == a[2 * i]).all() and (pair.images[8 + i] == b[2 * i]).all() for i in range(8))
    with pytest.raises(ValueError, match="pairwise"):
        build_pair_request(VS2.spec, a, b, "a cat")
    with pytest.raises(ValueError, match="uint8"):
        build_request(VS2.spec, frames.astype(np.float32), "a cat")


def test_chat_payload_and_completion_parsing():
    frames = np.zeros((3, 28, 28, 3), np.uint8)
    body = chat_payload(build_request(VS2.spec, frames, "a cat"))
    assert body["temperature"] == 0.0 and body["logprobs"] is True and body["top_logprobs"] == 20
    (user,) = body["messages"]
    video, prompt = user["content"]
    assert video["type"] == "video_url" and video["video_url"]["url"].startswith("data:video/jpeg;base64,")
    assert video["video_url"]["url"].count(",") == 3 and prompt == {"type": "text", "text": VS2.spec.render("a cat")}
    body = chat_payload(build_request(UR.spec, frames, "a cat"))
    assert "logprobs" not in body and body["max_tokens"] == 4096 and body["model"] == "UnifiedReward"
    assert [p["type"] for p in body["messages"][0]["content"]] == ["image_url"] * 3 + ["text"]
    assert chat_payload(build_request(COSMOS.spec, frames, ""))["messages"][0] == {
        "role": "system",
        "content": yesno.COSMOS_SYSTEM_PROMPT,
    }

    completion = {
        "choices": [
            {
                "message": {"content": "No"},
                "logprobs": {
                    "content": [
                        {
                            "token": "No",
                            "logprob": -0.2,
                            "top_logprobs": [{"token": "No", "logprob": -0.2}, {"token": "Yes", "logprob": -1.8}],
                        }
                    ]
                },
            }
        ]
    }
    generation = parse_completion(completion, wants_logprobs=True)
    assert generation.text == "No" and generation.tokens[0].top == {"No": -0.2, "Yes": -1.8}
    with pytest.raises(UpstreamRejected, match="logprobs"):
        parse_completion({"choices": [{"message": {"content": "No"}, "logprobs": None}]}, wants_logprobs=True)
    with pytest.raises(UpstreamRejected, match="not a chat completion"):
        parse_completion({"error": "overloaded"}, wants_logprobs=False)


def test_retry_after_accepts_seconds_and_http_dates():
    import email.utils
    import time

    import httpx

    assert retry_after_s(httpx.Response(429, headers={"Retry-After": "3"})) == 3.0
    later = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 < retry_after_s(httpx.Response(429, headers={"Retry-After": later})) <= 10.0
    assert retry_after_s(httpx.Response(503)) is None
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "soon"})) is None


@pytest.mark.parametrize(
    "header, seconds",
    [
        ("inf", None),
        ("1e400", None),  # float: inf
        ("nan", None),
        ("-5", None),
        ("1e300", MAX_RETRY_AFTER_S),  # capped
        ("86400", MAX_RETRY_AFTER_S),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER_S),  # far future: capped
        ("0", 0.0),
    ],
)
def test_retry_after_is_finite_non_negative_and_capped(header, seconds):
    import httpx

    assert retry_after_s(httpx.Response(503, headers={"Retry-After": header})) == seconds


def _one_token(token, logprob, top=None) -> dict:
    entry = {"token": token, "logprob": logprob, "top_logprobs": top if top is not None else []}
    return {"choices": [{"message": {"content": "No"}, "logprobs": {"content": [entry]}}]}


@pytest.mark.parametrize(
    "completion",
    [
        _one_token("No", 1000.0),  # was: OverflowError in math.exp, a 500
        _one_token("No", 0.5),
        _one_token("No", float("nan")),  # was: a NaN score, 422 non_finite_score
        _one_token("No", float("inf")),
        _one_token("No", float("-inf")),
        _one_token("No", 10**400),  # a JSON integer past float's range
        _one_token("No", "-0.2"),
        _one_token("No", True),
        _one_token("No", None),
        _one_token("No", -0.2, [{"token": "Yes", "logprob": 3.0}]),  # an alternative's logprob
        _one_token(7, -0.2),  # was: TypeError in Generation.token_spans, a 500
        _one_token(None, -0.2),
        _one_token("No", -0.2, [{"token": 7, "logprob": -1.0}]),
        _one_token("No", -0.2, {"token": "Yes"}),  # top_logprobs not a list
        {"choices": [{"message": {"content": "No"}, "logprobs": {"content": []}}]},  # text without logprobs
        {"choices": [{"message": {"content": "No"}, "logprobs": {"content": {"token": "No"}}}]},
        {"choices": [{"message": {"content": "No"}, "logprobs": {"content": ["No"]}}]},
    ],
)
def test_completion_logprobs_must_be_tokens_with_finite_logprobs_at_most_0(completion):
    with pytest.raises(UpstreamRejected):
        parse_completion(completion, wants_logprobs=True)


def test_completion_logprobs_within_rounding_of_0_are_0_and_an_empty_answer_needs_none():
    generation = parse_completion(_one_token("No", 5e-7, [{"token": "No", "logprob": 1e-6}]), wants_logprobs=True)
    assert generation.tokens[0].logprob == 0.0 and generation.tokens[0].top == {"No": 0.0}
    empty = {"choices": [{"message": {"content": ""}, "logprobs": {"content": []}}]}
    assert parse_completion(empty, wants_logprobs=True) == Generation(text="", tokens=())
    integral = parse_completion(_one_token("No", 0, [{"token": "Yes", "logprob": -3}]), wants_logprobs=True)
    assert integral.tokens[0].top == {"Yes": -3.0, "No": 0.0}


@pytest.mark.parametrize(
    "total, height, width, size",
    [(48, 720, 1280, (392, 728)), (121, 720, 1280, (252, 448)), (200, 720, 1280, (280, 504)), (33, 480, 832, None)],
)
def test_yes_no_frames_and_sizes_follow_the_cosmos_reward_service(total, height, width, size):
    """cosmos-rl's ``_process_video_inputs``: every k-th frame, k = (T - 1) // 160 + 1, the last one
    dropped if the count is odd, and each of the n frames resized within 9216 * 28 * 28 * 2 // n
    pixels (and at least 16 * 28 * 28 * 2). Was: 160 frames by linspace at a fixed 160-frame cap,
    3.3x fewer pixels than the reference on a 48-frame 720p clip."""
    from service.decode import sample_indices
    from service.preprocess import target_size

    spec = yesno.make().spec
    interval = (total - 1) // 160 + 1
    want = list(range(0, total, interval))
    want = want[: len(want) - len(want) % 2]
    assert sample_indices(total, 24.0, spec.sampling) == want
    per_frame = yesno.CLIP_PIXELS // len(want)
    h, w = target_size(height, width, spec.resolution, len(want))
    assert h % 28 == w % 28 == 0 and 16 * 28 * 28 * 2 <= h * w <= per_frame
    if size is not None:  # the reference's smart_resize with max_pixels = per_frame
        assert (h, w) == size
