"""The scoring operations (score, compare, rank) on wire types, without HTTP.

Each one scores its videos through ``Engine.score`` (so the score cache applies to compare and
rank as well), pointwise except for judges whose pairwise mode is configured, which compare's two
videos together; then applies the pure math in ``scoring``, ``pairwise`` and ``ranking``. The HTTP
routes and ``vrs score --local`` both call these.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from vrs_wire.schemas import (
    CompareRequest,
    CompareResponse,
    GroupRequest,
    ItemScore,
    ModelRef,
    Preference,
    RankedItem,
    RankRequest,
    RankResponse,
    ScoreRequest,
    ScoreResponse,
    ScoringOptions,
)

from models.spec import ModelSpec, Pairwise
from service import pairwise, ranking, scoring
from service.engine import Engine, ScoreInput
from service.errors import BadInput, ServiceError, Unprocessable, shown


@dataclass(frozen=True)
class Plan:
    """A request's models and weights, checked before any video is decoded."""

    specs: list[ModelSpec]
    weights: dict[str, float]
    normalise: bool
    pairwise: bool = False  # pairwise judges score A and B together (compare)

    def header(self) -> dict:
        """The response fields every operation shares."""
        return {"models": [ModelRef(name=s.name, version=s.version) for s in self.specs], "weights": self.weights}


@dataclass(frozen=True)
class _Scored:
    raw: dict[str, float]  # model.dimension -> raw model output
    item: ItemScore


def plan(engine: Engine, options: ScoringOptions, pairwise: bool = False) -> Plan:
    """Resolve models (explicit, else those the weights name, else the default), weights and
    normalisation. ``pairwise`` (compare): a judge with its pairwise mode configured brings that
    mode's spec (its relative dimensions)."""
    weights, field = options.weights, "weights"
    if options.preset is not None:
        weights = scoring.preset_weights(options.preset, engine.settings.weight_presets)
        field = f"preset {shown(options.preset)}"
    names = options.models or (scoring.models_named(weights) if weights else []) or [engine.settings.default_model]
    specs = [engine.spec(name, pairwise) for name in dict.fromkeys(names)]
    resolved = scoring.resolve_weights(weights, specs, field)
    if options.normalise:
        scoring.check_normalisable(specs)
    return Plan(specs, resolved, options.normalise, pairwise)


async def score(engine: Engine, body: ScoreRequest, inputs: list[ScoreInput]) -> ScoreResponse:
    """Pointwise: every dimension's score and the weighted overall, per item."""
    p = plan(engine, body)
    scored = await _score(engine, p, inputs, body.cache)
    return ScoreResponse(**p.header(), results=[s.item for s in scored])


async def compare(engine: Engine, body: CompareRequest, inputs: list[ScoreInput]) -> CompareResponse:
    """Pairwise: P(A>B), P(B>A), P(tie) and the winner, per dimension and for the overall. A judge
    with its pairwise mode configured compares A and B itself: its scores are A's and B's shares."""
    p = plan(engine, body, pairwise=True)
    _check_shared_prompt(body, p)
    a, b = await _score(engine, p, inputs, body.cache)
    reward_a, reward_b = scoring.oriented(a.raw, p.specs), scoring.oriented(b.raw, p.specs)
    per_dimension = {
        key: _preference(reward_a[key], reward_b[key], spec.pairwise)
        for spec in p.specs
        for key in scoring.dimensions([spec])
    }
    overall_spec = pairwise.shared_spec([s.pairwise for s in p.specs])
    return CompareResponse(
        **p.header(),
        results=[a.item, b.item],
        dimensions=per_dimension,
        overall=_preference(a.item.overall, b.item.overall, overall_spec),
    )


async def rank(engine: Engine, body: RankRequest, inputs: list[ScoreInput]) -> RankResponse:
    """Best-of-N and GRPO groups: ranking by overall, and group advantages per dimension and overall."""
    p = plan(engine, body)
    _check_shared_prompt(body, p)
    scored = await _score(engine, p, inputs, body.cache)
    overall = [s.item.overall for s in scored]
    order = ranking.order(overall)
    position = {index: place + 1 for place, index in enumerate(order)}
    rewards = [scoring.oriented(s.item.scores, p.specs) for s in scored]
    per_dimension = {
        key: ranking.advantages([r[key] for r in rewards], body.advantage_eps, body.advantage_std)
        for key in scoring.dimensions(p.specs)
    }
    overall_advantage = ranking.advantages(overall, body.advantage_eps, body.advantage_std)
    results = [
        RankedItem(
            **s.item.model_dump(),
            rank=position[i],
            advantage=overall_advantage[i],
            advantages={key: values[i] for key, values in per_dimension.items()},
        )
        for i, s in enumerate(scored)
    ]
    return RankResponse(**p.header(), ranking=order[: body.top_k], results=results)


async def _score(engine: Engine, p: Plan, inputs: list[ScoreInput], cache) -> list[_Scored]:
    """Raw scores from the engine -> shown scores (normalised if asked) and the weighted overall."""
    results = await engine.score(inputs, [s.name for s in p.specs], cache=cache, pairwise=p.pairwise)
    scored: list[_Scored] = []
    bad: list[ServiceError] = []
    for i, result in enumerate(results):
        raw = scoring.flatten(result.scores, p.specs)
        broken = [key for key, value in raw.items() if not math.isfinite(value)]
        if broken:  # JSON has no NaN/inf: a 200 would carry null where its schema says number
            bad.append(
                Unprocessable(
                    f"the model gave a non-finite score for {', '.join(broken)}", item=i, code="non_finite_score"
                )
            )
            continue
        shown = scoring.normalise(raw, p.specs) if p.normalise else raw
        total = scoring.overall(scoring.oriented(shown, p.specs), p.weights)
        item = ItemScore(index=i, scores=shown, overall=total, cached=all(result.cached.values()))
        scored.append(_Scored(raw, item))
    if bad:
        bad[0].others = bad[1:]
        raise bad[0]
    return scored


def _check_shared_prompt(body: GroupRequest, p: Plan) -> None:
    """A group's one prompt is checked once, naming the field (per-video prompts are checked per item)."""
    if body.prompts is not None or (body.prompt and body.prompt.strip()):
        return
    for spec in p.specs:
        if spec.needs_prompt:
            raise BadInput(f"prompt: model {spec.name!r} needs a non-empty prompt", code="missing_prompt")


def _preference(reward_a: float, reward_b: float, spec: Pairwise) -> Preference:
    pref = pairwise.prefer(reward_a, reward_b, spec)
    return Preference(**asdict(pref), pairwise=spec.model, theta=pairwise.theta(spec))
