"""One retry policy for every call that may meet a passing failure: tenacity underneath.

Downloads, an Optuna storage during a database restart, MLflow's tag writes that two processes
race on, and table creation on a fresh database all wait the same way: exponential backoff from
`first` seconds, doubling up to `cap`, plus up to `jitter` seconds at random (so processes that
failed together do not retry together), for at most `attempts` tries or `patience_s` seconds.
Only errors that `retry_on` accepts are retried; the last error is re-raised unchanged.
"""

from __future__ import annotations

from typing import Any, Callable

import tenacity


def policy(
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool],
    *,
    attempts: int | None = None,
    patience_s: float | None = None,
    first: float = 0.5,
    cap: float | None = 10.0,
    jitter: float = 0.0,
    on_wait: Callable[[BaseException, float], Any] | None = None,
) -> tenacity.Retrying:
    """A callable `policy(...)(fn, *args)`: fn's result, or its last error once the policy gives up.

    `on_wait(error, seconds)` runs before each wait (e.g. to say what is being waited out).
    """
    if isinstance(retry_on, type) or isinstance(retry_on, tuple):
        retry = tenacity.retry_if_exception_type(retry_on)
    else:
        retry = tenacity.retry_if_exception(retry_on)
    stops = [tenacity.stop_after_attempt(attempts)] if attempts else []
    if patience_s is not None:
        stops.append(tenacity.stop_after_delay(patience_s))
    wait = tenacity.wait_exponential(multiplier=first, **({} if cap is None else {"max": cap}))
    if jitter:
        wait = wait + tenacity.wait_random(0, jitter)
    before_sleep = None
    if on_wait is not None:

        def before_sleep(state: tenacity.RetryCallState) -> None:
            on_wait(state.outcome.exception(), state.next_action.sleep)

    return tenacity.Retrying(
        retry=retry,
        stop=tenacity.stop_any(*stops) if stops else tenacity.stop_never,
        wait=wait,
        reraise=True,
        before_sleep=before_sleep,
    )
