"""systemd notifications: readiness, status and watchdog keep-alives.

The protocol is a datagram to the socket named by ``NOTIFY_SOCKET``.
oslo.service's threading backend (cotyledon) sends ``READY=1`` from its
master as soon as it starts, before the worker has scanned anything, and
then removes ``NOTIFY_SOCKET``. The daemon must say ready only once the
first generation is published, and also sends ``STATUS=`` updates and
``WATCHDOG=1`` at half of ``WATCHDOG_USEC``, from the worker (the unit sets
``NotifyAccess=all``), while it makes progress. During the first scan it
sends ``EXTEND_TIMEOUT_USEC`` instead, so that readiness waits for a first
scan of any size while it progresses. So :func:`claim_environment` moves
the variables out of cotyledon's sight before it starts, and this module
speaks the protocol.
"""

import os
import socket
import threading
from collections.abc import Callable

from oslo_log import log as logging

LOG = logging.getLogger(__name__)
VARIABLES = ('NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID')
CLAIMED = 'HOTLOAD_'


def claim_environment() -> None:
    """Rename systemd's variables so only :class:`Notifier` uses them."""
    for name in VARIABLES:
        if name in os.environ:
            os.environ[CLAIMED + name] = os.environ.pop(name)


class Notifier:
    """Sends notifications when started by systemd, else does nothing.

    :param environ: Where ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` are read;
        by default the process environment, from which the claimed
        variables are removed.
    :param healthy: Asked before each keep-alive: a daemon whose work has
        stopped must let the watchdog fire, not feed it.
    """

    def __init__(self, environ: dict[str, str] | None = None,
                 healthy: Callable[[], bool] = lambda: True,
                 progress: Callable[[], str] = lambda: 'starting',
                 start_extension: float = 30.0) -> None:
        if environ is None:
            # Taken out of the environment: the probe's children, which
            # run user code, must not be able to talk to systemd.
            environ = {name: os.environ.pop(CLAIMED + name)
                       for name in VARIABLES if CLAIMED + name in os.environ}
            environ.update((name, os.environ[name]) for name in VARIABLES
                           if name in os.environ)
        address = environ.get(CLAIMED + 'NOTIFY_SOCKET',
                              environ.get('NOTIFY_SOCKET', ''))
        if address.startswith('@'):
            address = '\0' + address[1:]  # abstract namespace
        self.address = address
        usec = environ.get(CLAIMED + 'WATCHDOG_USEC',
                           environ.get('WATCHDOG_USEC', ''))
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() else 0.0
        self.start_extension = start_extension
        self._healthy = healthy
        self._progress = progress
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, *fields: str) -> None:
        """Send ``KEY=value`` fields in one datagram (no-op off systemd)."""
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto('\n'.join(fields).encode(), self.address)
            except OSError as exc:
                LOG.warning('Cannot notify systemd at %s: %s',
                            self.address, exc)

    def starting(self) -> None:
        """Keep systemd's start timeout away while the first scan progresses.

        A first scan takes as long as the tree is big (each probe up to
        ``probe_timeout``). No fixed ``TimeoutStartSec`` fits every tree, so
        while the scan makes progress, ``EXTEND_TIMEOUT_USEC`` pushes the
        deadline ``start_extension`` seconds ahead, with the progress as
        ``STATUS``; a scan that stops progressing lets it expire.
        """
        if self.address and self._thread is None:
            self._thread = threading.Thread(
                target=self._keep_alive, name='hotload-watchdog',
                daemon=True)
            self._thread.start()

    def ready(self, status: str) -> None:
        """Tell systemd the service is up; keep-alives follow."""
        self._ready.set()
        self.send('READY=1', f'STATUS={status}')
        self.starting()

    def status(self, status: str) -> None:
        self.send(f'STATUS={status}')

    def stopping(self) -> None:
        self._stop.set()
        self.send('STOPPING=1')

    def _interval(self) -> float:
        if self._ready.is_set():
            return self.watchdog_interval
        return min(self.start_extension / 3, self.watchdog_interval
                   or self.start_extension)

    def _keep_alive(self) -> None:
        while not self._stop.wait(self._interval() or 1.0):
            if self._ready.is_set() and not self.watchdog_interval:
                continue
            if not self._healthy():
                LOG.error('The daemon has made no progress for too long; '
                          'letting systemd\'s %s end it',
                          'watchdog' if self._ready.is_set()
                          else 'start timeout')
            elif self._ready.is_set():
                self.send('WATCHDOG=1')
            else:
                self.send(f'EXTEND_TIMEOUT_USEC='
                          f'{int(self.start_extension * 1e6)}',
                          f'STATUS={self._progress()}')
