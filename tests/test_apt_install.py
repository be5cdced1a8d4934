"""Installs of Debian packages by parallel test workers take turns (pipelines.owned_process)."""
from __future__ import annotations

import fcntl
import threading
import time

from pipelines import owned_process


class NotInstalled(Exception):
    pass


def test_an_install_waits_for_the_one_before_it_and_skips_apt_get_when_that_one_installed():
    installed = threading.Event()
    outcome = {}

    def second_install():
        try:
            # A package that does not exist: running apt-get for it would raise NotInstalled.
            outcome["seconds"] = owned_process.apt_install(
                "pipewright-no-such-package", installed.is_set, NotInstalled, "it is")
        except NotInstalled as exc:
            outcome["error"] = exc

    with open(owned_process.APT_TURN_LOCK, "a") as first:
        fcntl.flock(first, fcntl.LOCK_EX)  # the first install is running
        waiter = threading.Thread(target=second_install)
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not outcome  # waits its turn
        installed.set()  # the first install put the package in place
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert "error" not in outcome, outcome["error"]
    assert outcome["seconds"] >= 0.5
