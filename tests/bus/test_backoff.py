"""The one jittered backoff: retries, reconnects and restarts wait by it."""

from __future__ import annotations

import pytest

from rapid_objection.bus._retry import RECONNECT, RESTART, RETRY, Backoff, Outage, RetryPolicy


class TestBackoff:
    @pytest.mark.parametrize(
        ("backoff", "ceilings"),
        [
            pytest.param(RETRY, [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0], id="hook-retries"),
            pytest.param(RECONNECT, [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0], id="reconnect"),
            pytest.param(RESTART, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0], id="restart"),
        ],
    )
    def test_doubles_up_to_its_cap_in_the_upper_half(
        self, backoff: Backoff, ceilings: list[float]
    ) -> None:
        """Attempt n waits between half and all of ``first * 2**(n-1)``, capped."""
        for attempt, ceiling in enumerate(ceilings, start=1):
            for _ in range(20):
                assert ceiling / 2 <= backoff.delay(attempt) <= ceiling

    def test_has_jitter(self) -> None:
        """Peers that failed together do not all come back after the same pause."""
        assert len({RECONNECT.delay(3) for _ in range(20)}) > 1

    def test_retry_policy_waits_by_it(self) -> None:
        """A hook's retries follow the documented 0.1 s, 0.2 s, ... at most 2 s."""
        policy = RetryPolicy(max_deliveries=3)
        assert 0.05 <= policy.delay(1) <= 0.1
        assert 1.0 <= policy.delay(9) <= 2.0
        assert [policy.exhausted(n) for n in (1, 2, 3)] == [False, False, True]


class TestOutage:
    def test_counts_failures_until_it_is_over(self) -> None:
        """Each failure waits longer; a success starts again from the first delay."""
        outage = Outage(Backoff(first=1.0, cap=8.0))
        delays = [outage.next_delay() for _ in range(4)]
        assert 0.5 <= delays[0] <= 1.0
        assert 4.0 <= delays[3] <= 8.0
        outage.over()
        assert outage.failures == 0
        assert 0.5 <= outage.next_delay() <= 1.0

    @pytest.mark.anyio
    async def test_pause_sleeps_the_next_delay(self) -> None:
        """``pause`` counts the failure and sleeps about the delay it drew."""
        outage = Outage(Backoff(first=0.02, cap=0.02))
        await outage.pause()
        assert outage.failures == 1
