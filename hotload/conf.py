"""Configuration options, all in the ``[hotload]`` group.

The daemon, the CLI and (later) the provider inside Mistral read the same
options, so that they agree on where the manifest lives and how actions are
named.
"""

import os

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
        default=os.cpu_count() or 1,
        sample_default='<number of CPUs>',
        min=1,
        help='Number of modules probed at the same time.'),
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
]


DEFAULT_CONFIG_FILES = ['/etc/mistral-hotload/mistral-hotload.conf']


def load(config_files: list[str] | None = None) -> cfg.ConfigOpts:
    """The global ``cfg.CONF`` with the options registered and files read.

    The global one, because oslo.messaging registers some of its options
    (tracing) only there.

    :param config_files: Files to read, in order; None reads the default
        file when it exists.
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


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Entry point for oslo-config-generator (``oslo.config.opts``)."""
    return [(GROUP, hotload_opts)]
