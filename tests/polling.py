"""Waiting in tests: polls with a deadline, never a fixed sleep."""

import time

DEADLINE = 30.0


def wait_for(predicate, what: str, deadline: float = DEADLINE):
    """Poll ``predicate`` until it returns something truthy; return it.

    :raises AssertionError: naming ``what`` after ``deadline`` seconds.
    """
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f'timed out after {deadline} s waiting for '
                                 f'{what}')
        time.sleep(0.02)


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f'/proc/{pid}/stat') as stream:
            return stream.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False
