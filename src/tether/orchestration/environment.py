"""Where a run is driven: live (now, real approvals, spans) or replayed (as recorded).

The run context asks its environment, never a `None` switch, for the clock, whether a
timer fired, a recorded approval, tool novelty (a risk feature) and the tracer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tether.types import Approval, Decision, ToolCall


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Environment(Protocol):
    tracer: Any  # None: no spans

    def now(self) -> dt.datetime: ...

    def timer_fired(self, wake_at: str) -> tuple[bool, str]:
        """Whether the timer due at `wake_at` has fired, and the time it is recorded to have fired at."""
        ...

    def approval(self, call: ToolCall, decision: Decision) -> Approval | None:
        """A person's answer known without asking (replay: the recorded one), else None: the run waits."""
        ...

    def novel(self, tenant: str, tool: str) -> bool: ...


@dataclass
class Live:
    """A run driven now: the wall clock, approvals by people, spans to the tracer."""

    tracer: Any = None
    history: Callable[[str, str], bool] | None = None  # (tenant, tool) -> never executed for this tenant before?
    clock: Callable[[], dt.datetime] = utcnow
    timer_due: str | None = None  # a wake-up queued for this due time: that timer fires whatever the clock says

    def now(self) -> dt.datetime:
        return self.clock()

    def timer_fired(self, wake_at: str) -> tuple[bool, str]:
        now = self.clock()
        fired = now >= dt.datetime.fromisoformat(wake_at) or wake_at == self.timer_due
        return fired, now.isoformat(timespec="microseconds")

    def approval(self, call: ToolCall, decision: Decision) -> Approval | None:
        return None

    def novel(self, tenant: str, tool: str) -> bool:
        return self.history(tenant, tool) if self.history else False


@dataclass
class Replayed:
    """A recorded run driven again: timers fire, approvals and novelty answer, as they did then;
    no spans. `recording` is replay's `_Recording`."""

    recording: Any
    tracer: Any = None

    def now(self) -> dt.datetime:
        return utcnow()  # only for a timer the recording does not hold: replay stops there anyway

    def timer_fired(self, wake_at: str) -> tuple[bool, str]:
        return self.recording.timer_fired(), wake_at

    def approval(self, call: ToolCall, decision: Decision) -> Approval | None:
        return self.recording.approval(call, decision)  # type: ignore[no-any-return]

    def novel(self, tenant: str, tool: str) -> bool:
        return self.recording.novel(tenant, tool)  # type: ignore[no-any-return]
