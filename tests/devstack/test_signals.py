"""SIGTERM as Ctrl-C inside a local stack (`sigterm_as_interrupt`), even when it lands in a
finalizer, where a raised KeyboardInterrupt would be printed and ignored."""

from __future__ import annotations

import signal
import time

import pytest

from dispatchq.devstack.stack import sigterm_as_interrupt


def test_a_sigterm_interrupts_the_main_thread() -> None:
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        signal.raise_signal(signal.SIGTERM)
        for _ in range(500):
            time.sleep(0.01)


def test_a_sigterm_that_lands_in_a_finalizer_still_interrupts() -> None:
    class Finalized:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGTERM)  # its handler runs inside this __del__

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        Finalized()  # collected at once
        for _ in range(500):  # the interrupt comes here, delivered again
            time.sleep(0.01)
    assert time.monotonic() - started < 5
