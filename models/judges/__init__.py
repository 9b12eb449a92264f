"""Generative VLM judges: specs, parsers and the runners that ask the models (see ``spec``).

``JUDGES`` is the table of shipped judges, by name, each built with its defaults; call a judge
module's ``make(...)`` for another upstream model name or, for ``yes-no``, another question.
"""

from models.judges import unifiedreward, videoscore2, yesno
from models.judges.spec import (
    Generation,
    Judge,
    JudgeAnswerError,
    JudgeError,
    JudgeOutput,
    JudgeSpec,
    PairOutput,
    TokenLogprob,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)

JUDGES: dict[str, Judge] = {
    videoscore2.NAME: videoscore2.make(),
    unifiedreward.NAME: unifiedreward.make(),
    yesno.NAME: yesno.make(),
}

__all__ = [
    "JUDGES",
    "Generation",
    "Judge",
    "JudgeAnswerError",
    "JudgeError",
    "JudgeOutput",
    "JudgeSpec",
    "PairOutput",
    "TokenLogprob",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamUnavailable",
]
