"""The error a rollout server's failure ends in, so that the trainer can tell it from its own bugs.

A request to a vLLM server (``rlreason.rollout.gloo_transfer.HTTPClient``) that is safe to repeat
is retried after transient failures; once the retries are spent, and at once for a failure that a
repeat cannot mend (a client error, a weight update that stopped midway), it raises
``RolloutServerError``: the server is down or broken, the policy is not. The trainer then has what
it needs to stop with a checkpoint (the weights it trained are fine) and say which server failed
and how. The error may reach the trainer wrapped (the overlapped rollouts' thread re-raises with
the original as ``__cause__``): ``find_server_error`` looks through the chain.
"""

from __future__ import annotations

import json


class RolloutServerError(RuntimeError):
    """A rollout server failed a request for good.

    ``url``: the request's; ``status``: the HTTP status of the last answer (None: no answer, the
    connection failed or timed out); ``message``: the server's own (vLLM's error message), or the
    connection error; ``attempts``: how many times the request was sent; ``hint``: what it means
    for the run and what to do.
    A RuntimeError, as the HTTP errors it replaces were: code that catches those still does."""

    def __init__(self, url: str, status: int | None, message: str, attempts: int = 1, hint: str = "") -> None:
        self.url, self.status, self.message, self.attempts, self.hint = url, status, message, attempts, hint
        answer = f"HTTP {status}" if status is not None else "no answer"
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"vLLM server {url}: {answer}: {message}{tries}" + (f"; {hint}" if hint else ""))

    def with_hint(self, more: str) -> RolloutServerError:
        """The same failure, ``more`` added to what it means for the run (e.g. where the run stopped)."""
        return RolloutServerError(self.url, self.status, self.message, self.attempts,
                                  f"{self.hint}; {more}" if self.hint else more)


def server_message(body: bytes | str, limit: int = 2000) -> str:
    """The message in a server's error answer: vLLM's JSON error (``{"error": {"message": ...}}``,
    or ``{"message": ...}`` from older versions and FastAPI's ``{"detail": ...}``), else the raw text."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text[:limit]
    if isinstance(data, dict):
        err = data.get("error")
        for msg in (err.get("message") if isinstance(err, dict) else err, data.get("message"), data.get("detail")):
            if isinstance(msg, str) and msg:
                return msg[:limit]
    return text[:limit]


def find_server_error(exc: BaseException | None) -> RolloutServerError | None:
    """``exc`` or the first ``RolloutServerError`` among its causes/contexts; None if there is none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RolloutServerError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
