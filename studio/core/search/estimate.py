"""How long a search should take, said before it starts (the Search dialog shows it)."""

from __future__ import annotations

import math

from studio.core.search.settings import SearchSettings

PROXY_S = 1.0
"""Seconds of one zero-shot trial on the demo on one core (0.7 s measured on an idle machine,
about 2 s on a loaded one)."""


SUPERNET_EPOCH_S = 120.0
"""Seconds of one supernet epoch on the demo (four subnets per batch on 3,500 digits: 250 s
measured on one thread of a heavily shared 2-core machine; less on an idle one)."""


def estimate_search_s(settings: SearchSettings, proxy_s: float = PROXY_S,
                      full_s: float = 30.0, done: int = 0) -> float:
    """Wall-clock seconds for the trials still to run: every trial at the proxy, the promoted
    share at full fidelity (``full_s`` each: a run of the plan), spread over the workers;
    capped by the minutes budget. A subnet search first trains its supernet (when no trial
    has run yet)."""
    left = max(0, settings.trials - done)
    full = math.ceil(left * settings.promote_fraction) if settings.full_fidelity else 0
    workers = 1 if settings.ray_address else settings.workers
    seconds = (left * proxy_s + full * full_s) / workers
    if settings.space == "subnet" and not done:
        seconds += settings.supernet_epochs * SUPERNET_EPOCH_S
    if settings.minutes is not None:
        seconds = min(seconds, 60.0 * settings.minutes)
    return seconds
