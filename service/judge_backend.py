"""The judges a gateway serves, each with the runner that asks its model: the one object the
engine is to call for a judge (instead of the micro-batcher and the tensor backend).

``JudgeBackend.from_config({"videoscore2": JudgeUpstream(url="http://gpu:8001"), ...})`` builds
each judge from the table (``models.judges.JUDGES``) with its upstream model name, and one runner
per upstream: an ``OpenAIChatRunner`` per URL (shared by judges on the same server, so the
concurrency bound is per server) or a ``TransformersRunner`` per checkpoint directory.

``score`` answers every item, each with a ``JudgeOutput`` or the ``JudgeError`` that item met
(an unreadable answer, an upstream down), so one bad item never fails the others.
Not yet wired into ``service.engine`` (issue 16, next step).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from models.judges import JUDGES
from models.judges.runner import Runner, judge, judge_pair
from models.judges.spec import Judge, JudgeError, JudgeOutput, JudgeSpec, PairOutput
from service.judge_client import OpenAIChatRunner


class JudgeUpstream(BaseModel):
    """Where a judge's model runs: an OpenAI-compatible server (``url``) or a local checkpoint (``directory``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str | None = None
    directory: Path | None = None
    model: str | None = Field(default=None, description="Served model name, if not the judge's default.")
    api_key: SecretStr | None = None
    max_concurrency: int = Field(default=8, ge=1)
    max_attempts: int = Field(default=5, ge=1)
    timeout_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _one_place(self) -> JudgeUpstream:
        if (self.url is None) == (self.directory is None):
            raise ValueError("a judge upstream needs exactly one of url or directory")
        return self


@dataclasses.dataclass
class JudgeItem:
    frames: np.ndarray  # uint8 [T, H, W, 3], sampled and resized per the judge's spec
    prompt: str = ""
    fps: float | None = None


class JudgeBackend:
    def __init__(self, judges: dict[str, tuple[Judge, Runner]]) -> None:
        self._judges = judges

    @classmethod
    def from_config(cls, upstreams: dict[str, JudgeUpstream]) -> JudgeBackend:
        unknown = sorted(set(upstreams) - set(JUDGES))
        if unknown:
            raise ValueError(f"unknown judges {unknown}; known: {sorted(JUDGES)}")
        runners: dict[object, Runner] = {}
        judges = {}
        for name, where in upstreams.items():
            j = JUDGES[name]
            if where.model is not None:
                j = dataclasses.replace(j, spec=j.spec.model_copy(update={"upstream_model": where.model}))
            key = where.url or where.directory
            if key not in runners:
                if where.url is not None:
                    runners[key] = OpenAIChatRunner(
                        where.url,
                        api_key=where.api_key.get_secret_value() if where.api_key else None,
                        max_concurrency=where.max_concurrency,
                        max_attempts=where.max_attempts,
                        timeout_s=where.timeout_s,
                    )
                else:
                    from models.judges.transformers_runner import TransformersRunner  # torch + transformers

                    runners[key] = TransformersRunner.load(where.directory)
            judges[name] = (j, runners[key])
        return cls(judges)

    @property
    def names(self) -> list[str]:
        return list(self._judges)

    def spec(self, name: str) -> JudgeSpec:
        return self._judges[name][0].spec

    async def score(self, name: str, items: Sequence[JudgeItem]) -> list[JudgeOutput | JudgeError]:
        j, runner = self._judges[name]
        results = await asyncio.gather(
            *(judge(runner, j, it.frames, it.prompt, it.fps) for it in items), return_exceptions=True
        )
        for r in results:  # judge failures are per item; anything else is a bug and propagates
            if isinstance(r, BaseException) and not isinstance(r, JudgeError):
                raise r
        return results

    async def compare(self, name: str, a: JudgeItem, b: JudgeItem) -> PairOutput:
        j, runner = self._judges[name]
        return await judge_pair(runner, j, a.frames, b.frames, a.prompt)

    async def aclose(self) -> None:
        closed = set()
        for _, runner in self._judges.values():
            if id(runner) not in closed and isinstance(runner, OpenAIChatRunner):
                closed.add(id(runner))
                await runner.aclose()
