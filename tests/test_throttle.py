"""The log throttle: first message always, then at most one per period."""

from __future__ import annotations

import pytest

from mlwarden.middleware.throttle import Throttle

pytestmark = pytest.mark.floor


def test_the_first_message_passes_even_when_the_clock_reads_near_zero():
    now = [0.5]
    throttle = Throttle(lambda: now[0], 60.0)
    assert throttle.ready()
    now[0] = 30.0
    assert not throttle.ready()
    now[0] = 60.5
    assert throttle.ready()
    assert throttle.take_suppressed() == 1 and throttle.suppressed == 0
