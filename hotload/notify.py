"""systemd notifications: readiness, status and watchdog keep-alives.

The protocol is a datagram to the socket named by ``NOTIFY_SOCKET``.
oslo.service's threading backend (cotyledon) sends ``READY=1`` from its
master as soon as it starts, before the worker has scanned anything, and
then removes ``NOTIFY_SOCKET``. The daemon must say ready only once the
first generation is published, and also sends ``STATUS=`` updates and
``WATCHDOG=1`` at half of ``WATCHDOG_USEC``, from the worker (the unit sets
``NotifyAccess=all``). So :func:`claim_environment` moves the variables out
of cotyledon's sight before it starts, and this module speaks the protocol.
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
                 healthy: Callable[[], bool] = lambda: True) -> None:
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
        self._healthy = healthy
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

    def ready(self, status: str) -> None:
        """Tell systemd the service is up; start watchdog keep-alives."""
        self.send('READY=1', f'STATUS={status}')
        if self.watchdog_interval and self._thread is None:
            self._thread = threading.Thread(
                target=self._keep_alive, name='hotload-watchdog',
                daemon=True)
            self._thread.start()

    def status(self, status: str) -> None:
        self.send(f'STATUS={status}')

    def stopping(self) -> None:
        self._stop.set()
        self.send('STOPPING=1')

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.watchdog_interval):
            if self._healthy():
                self.send('WATCHDOG=1')
            else:
                LOG.error('The scan loop has not turned for too long; '
                          'letting the systemd watchdog restart the daemon')
