"""``doctor``'s ``names`` check: no hot action name is one that another
action provider of this node's Mistral processes serves.

Only a Mistral process knows its providers (an installed plug-in,
mistral-extra, Mistral's own ``std.*``), so the processes are asked over
the broker, as ``status`` asks them, and each reports the names it does
not serve for that reason (:mod:`hotload.clashes`). The row appears only
when one does, so a healthy report keeps its rows; without a broker that
answers, the ``broker`` row already says why nothing could be asked.
"""

from oslo_config import cfg

from hotload import exceptions
from hotload import store
from hotload.cli import operate
from hotload.cli.diagnosis import FAIL
from hotload.cli.diagnosis import Row

NAME = 'names'
#: Seconds the Mistral processes have to answer, as ``status``'s default.
TIMEOUT = 2.0
#: Clashes named in the row; the rest are counted.
SHOWN = 3


def check_names(conf: cfg.ConfigOpts,
                timeout: float = TIMEOUT) -> Row | None:
    """The ``names`` row when a Mistral process of this node does not
    serve a hot action because another of its providers serves the name;
    None when none reports one, or none could be asked.

    :param conf: Configuration with the transport and ``[hotload]``.
    :param timeout: Seconds to wait for the broker and the processes.
    """
    try:
        current = store.ManifestStore(conf.hotload.state_dir).load()
    except (exceptions.ManifestError, OSError):
        current = None  # the state_dir row says why
    processes, _unasked = operate.mistral_processes(
        conf, current.generation if current else 0, timeout,
        all_hosts=False)
    lines = operate.clash_errors(processes, current)
    if not lines:
        return None
    more = (f' (and {len(lines) - SHOWN} more: mistral-hotload status '
            f'lists them)' if len(lines) > SHOWN else '')
    what = ('1 hot action name is' if len(lines) == 1
            else f'{len(lines)} hot action names are')
    return Row(NAME, FAIL,
               f'{what} also served by another action provider of Mistral, '
               f'whose action Mistral runs instead: '
               + '; '.join(lines[:SHOWN]) + more)
