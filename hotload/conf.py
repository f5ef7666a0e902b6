"""Configuration options, all in the ``[hotload]`` group.

The daemon, the CLI and (later) the provider inside Mistral read the same
options, so that they agree on where the manifest lives and how actions are
named.
"""

import os
import socket

from oslo_config import cfg

GROUP = 'hotload'

hotload_opts = [
    cfg.StrOpt(
        'actions_dir',
        default='/etc/mistral/actions.d',
        help='Directory watched for action modules. It is mounted as the '
             'Python package named by package_name, so modules in it can '
             'import each other.'),
    cfg.StrOpt(
        'state_dir',
        default='/var/lib/mistral-hotload',
        help='Directory holding the manifest generations and the blob '
             'store. Must be writable by the daemon and readable by every '
             'Mistral process on the node.'),
    cfg.StrOpt(
        'action_prefix',
        default='hotload',
        help='Prefix of every hot action name: <prefix>.<module path>.'
             '<snake_case class name>. May be empty; a non-empty prefix '
             'keeps hot actions apart from the ones Mistral ships.'),
    cfg.StrOpt(
        'package_name',
        default='hotload_actions',
        regex=r'^[A-Za-z_][A-Za-z0-9_]*$',
        help='Import name under which actions_dir is mounted. Modules can '
             'import siblings absolutely (import <package_name>.common) or '
             'relatively (from . import common).'),
    cfg.FloatOpt(
        'probe_timeout',
        default=10.0,
        min=0.1,
        help='Seconds a module may take to import in the probe process '
             'before it is killed and reported as hanging.'),
    cfg.IntOpt(
        'probe_memory_limit',
        default=1024,
        min=64,
        help='Address space limit of a probe process, in MiB. A module '
             'that allocates past it at import is reported, not loaded.'),
    cfg.IntOpt(
        'probe_workers',
        # Twice the CPUs: a probe spends part of its time waiting (for a
        # fork, a pipe, the daemon), not running; at 2 CPUs a first scan
        # of 1,000 modules took 20 s with 2 workers, 14 s with 4 and
        # 16 s with 8.
        default=2 * (os.cpu_count() or 1),
        sample_default='<twice the number of CPUs>',
        min=1,
        help='Number of modules probed at the same time. The default, '
             'twice the number of CPUs, keeps the CPUs busy while some '
             'probes wait.'),
    cfg.IntOpt(
        'max_file_size',
        default=1024 * 1024,
        min=1,
        help='Largest module accepted, in bytes. Larger files are refused '
             'without being read.'),
    cfg.ListOpt(
        'trusted_owners',
        default=['root'],
        help='Users (names or numeric ids) allowed to own the actions '
             'directory and its files. The user the daemon runs as is '
             'always trusted.'),
    cfg.ListOpt(
        'reserved_prefixes',
        default=['std.'],
        help='Action name prefixes a hot action may never take, so that it '
             'cannot shadow actions Mistral ships.'),
    cfg.StrOpt(
        'signal_topic',
        default='mistral_hotload',
        help='oslo.messaging topic the daemon signals new generations on '
             'and every provider listens to.'),
    cfg.FloatOpt(
        'debounce_interval',
        default=0.05,
        min=0.0,
        help='Seconds the daemon waits after a file system event for more '
             'before it scans, so that a burst (an editor save, a cp -r) '
             'is one scan.'),
    cfg.IntOpt(
        'max_depth',
        default=32,
        min=1,
        help='Deepest directory level under actions_dir that is loaded. '
             'Deeper directories are refused with a report instead of '
             'walked.'),
    cfg.FloatOpt(
        'rescan_interval',
        default=60.0,
        min=0.0,
        help='Seconds between full safety rescans of actions_dir, which '
             'bound how long a change whose file system event was lost '
             '(an inotify queue overflow) can go unnoticed. 0 disables '
             'them.'),
    cfg.IntOpt(
        'keep_generations',
        default=10,
        min=1,
        help='Number of manifest generations kept on disk. Blobs that none '
             'of them refers to are deleted.'),
    cfg.StrOpt(
        'mode',
        default='publisher',
        choices=[('publisher', 'Watch actions_dir and publish generations '
                               '(a single node, or the one node of a '
                               'cluster that publishes).'),
                 ('mirror', 'Copy the publisher\'s signed generations into '
                            'state_dir over oslo.messaging; no actions_dir '
                            'is needed.')],
        help='What the daemon does. One daemon of a cluster publishes, the '
             'daemon of every other node mirrors it; both need the same '
             'cluster_key.'),
    cfg.StrOpt(
        'cluster_key',
        secret=True,
        help='Shared secret (the same on every node) with which the '
             'publisher signs the manifests it serves to mirrors '
             '(HMAC-SHA256). A mirror refuses to start without it; a '
             'publisher without it serves no mirror.'),
    cfg.FloatOpt(
        'mirror_check_interval',
        default=30.0,
        min=1.0,
        help='Seconds between a mirror\'s comparisons of its generation '
             'with the publisher\'s, which bound how long a missed '
             'announcement delays it.'),
    cfg.FloatOpt(
        'cluster_timeout',
        default=5.0,
        min=0.1,
        help='Seconds one RPC call between a mirror and the publisher may '
             'take before the publisher is reported unreachable.'),
    cfg.FloatOpt(
        'cluster_grace',
        default=60.0,
        min=0.0,
        help='Seconds after the publisher published a generation during '
             'which a node still serving an older one is "converging" in '
             '`mistral-hotload status --cluster` (exit status 1); after '
             'them it is "lagging" (exit status 2). The default is twice '
             'the default mirror_check_interval: a mirror that missed the '
             'announcement catches up at its next periodic check.'),
]


#: Read, those that exist, when no ``--config-file`` is given: Mistral's
#: file first (``transport_url`` and ``[hotload]``, as the shipped unit
#: reads it), then the project's own, whose values win.
DEFAULT_CONFIG_FILES = ['/etc/mistral/mistral.conf',
                        '/etc/mistral-hotload/mistral-hotload.conf']


def load(config_files: list[str] | None = None) -> cfg.ConfigOpts:
    """The global ``cfg.CONF`` with the options registered and files read.

    The global one, because oslo.messaging registers some of its options
    (tracing) only there.

    :param config_files: Files to read, in order; None reads those of
        :data:`DEFAULT_CONFIG_FILES` that exist.
    """
    conf = cfg.CONF
    register_opts(conf)
    if config_files is None:
        config_files = [f for f in DEFAULT_CONFIG_FILES if os.path.exists(f)]
    conf(args=[], project='mistral-hotload',
         default_config_files=config_files, default_config_dirs=[])
    return conf


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the ``[hotload]`` options on ``conf``."""
    conf.register_opts(hotload_opts, group=GROUP)


def register_host_opt(conf: cfg.ConfigOpts) -> None:
    """Register ``[DEFAULT] host`` on ``conf`` unless something did already.

    It is Mistral's own option (the name of its RPC servers), read from
    the same ``mistral.conf``; registering it again with other attributes
    would raise, so an existing one is left alone.

    :param conf: The configuration to register it on.
    """
    if 'host' not in conf:
        conf.register_opt(cfg.StrOpt(
            'host',
            help='Name of this node (Mistral\'s own option); by default the '
                 'host name. Lets several simulated nodes share a machine.'))


def node_name(conf: cfg.ConfigOpts) -> str:
    """What this node calls itself: ``[DEFAULT] host``, else the host name.

    :param conf: The configuration, parsed.
    """
    register_host_opt(conf)
    return conf.host or socket.gethostname()


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Entry point for oslo-config-generator (``oslo.config.opts``)."""
    return [(GROUP, hotload_opts)]
