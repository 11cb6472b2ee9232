"""SIGTERM stops a command as Ctrl-C does (`avvp.utils.interrupt_on_sigterm`), and its clean-up runs to the end even
when a second SIGTERM arrives during it (a sweep worker is stopped by its parent and by its own orphan watch)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from avvp.utils import interrupt_on_sigterm


def test_a_second_sigterm_does_not_cut_the_clean_up_short() -> None:
    cleaned = []
    with pytest.raises(KeyboardInterrupt), interrupt_on_sigterm():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted at once
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # stopped again while cleaning up
            time.sleep(0.05)  # Python runs signal handlers between bytecodes: here, if at all
            cleaned.append(True)
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the block leaves SIGTERM as it found it
