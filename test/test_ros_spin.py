"""safnet_ros.ros.spin.spin_resilient: the races of rclpy's spin() that end or kill a spin thread."""
from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy._rclpy_pybind11 import RCLError  # noqa: E402
from rclpy.exceptions import InvalidHandle  # noqa: E402

from safnet_ros.ros.spin import spin_resilient  # noqa: E402


class ScriptedExecutor:
    """Stands in for an executor: each spin_once runs the next step (raise, or call a function)."""

    def __init__(self, steps):
        self.steps = list(steps)
        self.calls = 0
        self._is_shutdown = False

    def spin_once(self, timeout_sec=None):
        self.calls += 1
        if not self.steps:
            self._is_shutdown = True
            return
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        step()


@pytest.fixture
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def test_an_entity_destroyed_while_the_wait_set_is_built_does_not_end_the_loop(context):
    executor = ScriptedExecutor([InvalidHandle("destruction was requested"), lambda: None])
    spin_resilient(executor, context, period_s=0.01)
    assert executor.calls == 3  # the race, one good round, then the executor shut down


def test_the_context_shut_down_under_the_wait_set_ends_the_loop_quietly(context):
    """SIGINT shuts the context down while the wait set is built: rclpy raises RCLError; a normal end."""
    def sigint_then_race():
        rclpy.shutdown(context=context)
        raise RCLError("failed to initialize wait set: the given context is not valid")

    executor = ScriptedExecutor([lambda: None, sigint_then_race, lambda: None])
    spin_resilient(executor, context, period_s=0.01)  # returns, no exception
    assert executor.calls == 2


def test_an_rcl_error_with_the_context_still_valid_is_raised(context):
    executor = ScriptedExecutor([RCLError("something else failed")])
    with pytest.raises(RCLError, match="something else"):
        spin_resilient(executor, context, period_s=0.01)
