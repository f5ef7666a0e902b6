"""The daemon's lifecycle under oslo.service, and its launch.

:class:`hotload.daemon.Daemon` does the work; this module runs it as an
oslo.service service (threading backend, a master and one worker process),
checks what would make every worker fail before launching, and reads the
configuration.
"""

import os
import signal
import sys
import threading

from oslo_config import cfg
from oslo_log import log as logging
from oslo_service.backend import base as service_base

from hotload import conf as hotload_conf
from hotload import notify
from hotload import signals
from hotload import trust
from hotload.daemon import Daemon
from hotload.mirror import Mirror

LOG = logging.getLogger(__name__)


class DaemonService(service_base.ServiceBase):
    """oslo.service lifecycle around :class:`Daemon`, or :class:`Mirror`
    with ``[hotload] mode = mirror``.

    SIGTERM stops it after the generation being written is finished;
    SIGHUP re-reads the configuration files and restarts the worker, which
    rescans with the new options.

    :param conf: The daemon's configuration.
    """

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__()
        self.conf = conf
        self.daemon: Daemon | Mirror | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        if self.conf.hotload.mode == 'mirror':
            self.daemon = Mirror(self.conf, restart=restart_worker)
        else:
            self.daemon = Daemon(self.conf, restart=restart_worker)
        self.daemon.start()

    def stop(self, graceful: bool = False) -> None:
        if self.daemon:
            self.daemon.stop()
        self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()

    def reset(self) -> None:
        # Part of oslo.service's interface; on its threading backend SIGHUP
        # restarts the worker instead of calling this.
        if self.daemon:
            self.daemon.rescan()


def restart_worker(reason: str) -> None:
    """Replace this worker process: it sends itself SIGTERM, stops in
    order, and oslo.service's master starts a new one (new watches, the
    state directory's lock taken again).

    :param reason: Why; the daemon has logged it.
    """
    os.kill(os.getpid(), signal.SIGTERM)


def startup_problem(conf: cfg.ConfigOpts) -> str | None:
    """Why the daemon cannot start with ``conf``, or None.

    Checked before launching, in the master: a worker that failed on these
    would be restarted forever.
    """
    options = conf.hotload
    if options.mode == 'mirror':
        problem = _mirror_problem(conf)
        if problem:
            return problem
    elif not os.path.isdir(options.actions_dir):
        return (f'actions_dir {options.actions_dir} is not a directory; '
                f'create it (owned by root or the service user, mode 0755) '
                f'or set [hotload] actions_dir')
    # Providers run whatever the state directory's manifest names: it must
    # be as trusted as the actions directory.
    policy = trust.TrustPolicy(options.trusted_owners,
                               options.max_file_size)
    state_dir = options.state_dir
    problem = policy.check_ancestors(state_dir)
    if not problem and os.path.exists(state_dir):
        problem = policy.check_dir(state_dir, os.stat(state_dir))
    if problem:
        return f'state_dir {state_dir} is not trusted: {problem}'
    return None


def _mirror_problem(conf: cfg.ConfigOpts) -> str | None:
    """Why ``mode = mirror`` cannot work with ``conf``, or None."""
    if not conf.hotload.cluster_key:
        # Unsigned generations from the broker would be code anyone on it
        # could make this node run.
        return ('mode = mirror needs [hotload] cluster_key, the secret the '
                'publisher signs its manifests with (the same value on '
                'every node): without it no generation could be checked; '
                'refusing to start')
    if not signals.transport_configured(conf):
        return ('mode = mirror needs [DEFAULT] transport_url, the broker '
                'shared with the publisher; refusing to start')
    return None


def load_config(argv: list[str]) -> cfg.ConfigOpts:
    """The daemon's configuration from its command line.

    ``--config-file`` may be given several times, typically Mistral's
    ``mistral.conf`` (for ``transport_url``, and ``[hotload]`` so that the
    daemon and the providers agree) and the daemon's own file. The global
    ``cfg.CONF`` is used, as oslo.messaging expects of a service.
    """
    conf = cfg.CONF
    hotload_conf.register_opts(conf)
    signals.register_transport_opts(conf)
    hotload_conf.register_host_opt(conf)
    logging.register_options(conf)
    conf(argv, project='mistral-hotload',
         default_config_files=[f for f in hotload_conf.DEFAULT_CONFIG_FILES
                               if os.path.exists(f)])
    return conf


def main(argv: list[str] | None = None) -> int:
    """Run the daemon; see :mod:`hotload.cmd.daemon` for the backend."""
    from oslo_service import service

    conf = load_config(sys.argv[1:] if argv is None else argv)
    logging.setup(conf, 'mistral-hotload')
    problem = startup_problem(conf)
    if problem:
        LOG.error('%s', problem)
        return 1
    notify.claim_environment()
    # 'reload' re-reads every option on SIGHUP ('mutate' would skip the
    # immutable ones); cotyledon then restarts the worker, which rescans.
    launcher = service.launch(conf, DaemonService(conf),
                              restart_method='reload')
    return launcher.wait() or 0
