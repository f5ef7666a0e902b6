"""The systemd unit in ``systemd/``: systemd accepts it, and it says what
the daemon needs.

``systemd-analyze verify`` (Debian package ``systemd``) is the check systemd
itself applies when it loads a unit: unknown or misspelt directives, values
it cannot parse and an ``ExecStart=`` binary that is not executable are all
reported and make it exit non-zero. It needs no running systemd and no root.

``verify`` checks that ``ExecStart=`` exists, and this environment installs
``mistral-hotload-daemon`` into its own ``bin/``, not ``/usr/bin``, so the
test verifies a copy of the unit whose ``ExecStart=`` binary (only the
path, not its arguments) is the one of the Python running the tests.
Nothing else is rewritten: ``User=mistral`` stays, because systemd 252's
``verify`` does not look users up (they are resolved when the service
starts), so a host without a ``mistral`` user verifies the unit as
shipped. ``ExecReload=/bin/kill`` is checked as it is (Debian package
``procps``, on every ordinary Debian system).
"""

import configparser
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

UNIT_NAME = 'mistral-hotload.service'
UNIT = pathlib.Path(__file__).resolve().parents[2] / 'systemd' / UNIT_NAME
INSTALLED_DAEMON = '/usr/bin/mistral-hotload-daemon'
EXEC_START = re.compile(r'^ExecStart=' + re.escape(INSTALLED_DAEMON) + r' ',
                        re.MULTILINE)

# oslo.service's default graceful_shutdown_timeout, in seconds: systemd must
# wait longer before its SIGKILL than the master waits for its worker.
GRACEFUL_SHUTDOWN_TIMEOUT = 60


def _systemd_analyze() -> str:
    path = shutil.which('systemd-analyze')
    if path is None:
        pytest.fail('systemd-analyze not found: install the Debian package '
                    '"systemd" (apt-get install -y systemd)')
    return path


def _daemon_of_this_environment() -> str:
    path = os.path.join(os.path.dirname(sys.executable),
                        'mistral-hotload-daemon')
    if not os.access(path, os.X_OK):
        path = shutil.which('mistral-hotload-daemon')
    if path is None:
        pytest.fail('mistral-hotload-daemon is not installed beside '
                    f'{sys.executable} nor on PATH: install the project')
    return path


def _testable_copy(directory: pathlib.Path, extra: str = '') -> pathlib.Path:
    """The unit, with ExecStart= on this environment's daemon.

    The copy keeps the unit's file name, from which verify takes the unit
    name. ``extra`` is appended to the ``[Service]`` section.
    """
    text = UNIT.read_text()
    text, count = EXEC_START.subn(
        f'ExecStart={_daemon_of_this_environment()} ', text)
    assert count == 1, f'expected one ExecStart={INSTALLED_DAEMON} in {UNIT}'
    if extra:
        text = text.replace('\n[Install]\n', f'\n{extra}\n\n[Install]\n')
    copy = directory / UNIT_NAME
    copy.write_text(text)
    return copy


def _verify(path: pathlib.Path) -> tuple[int, list[str], str]:
    """Run ``systemd-analyze verify``: exit status, lines about our unit.

    ``--recursive-errors=no`` makes the exit status depend only on the unit
    given, not on the host's units it is ordered against (network-online
    .target, rabbitmq-server.service), whose own warnings, if any, say
    nothing about ours. For the same reason only the lines of stderr that
    name our unit (``<path>:<line>: ...`` or ``mistral-hotload.service:
    ...``) are returned; the whole stderr comes back for messages.
    ``--man=no``: the unit has no ``man:`` documentation to look up, and
    CI has no man pages.
    """
    if not os.access('/bin/kill', os.X_OK):
        pytest.fail('/bin/kill (ExecReload=) not found: install the Debian '
                    'package "procps"')
    result = subprocess.run(
        [_systemd_analyze(), 'verify', '--man=no', '--recursive-errors=no',
         str(path)],
        capture_output=True, text=True, timeout=120, check=False)
    ours = [line for line in result.stderr.splitlines()
            if UNIT_NAME in line]
    return result.returncode, ours, result.stderr


def _service() -> configparser.SectionProxy:
    # strict=False: systemd allows a key more than once (the last one wins
    # for single-valued settings, as here); no interpolation of $MAINPID.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(UNIT.read_text())
    return parser['Service']


def _all_values(key: str) -> list[str]:
    """Every value of a list setting that may be given several times."""
    return re.findall(rf'^{key}=(.*)$', UNIT.read_text(), re.MULTILINE)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    returncode, ours, stderr = _verify(_testable_copy(tmp_path))

    assert ours == [], stderr
    assert returncode == 0, stderr


def test_verify_rejects_a_broken_directive(tmp_path):
    # Proves the check above can fail: a misspelt directive and a bad value.
    returncode, ours, stderr = _verify(_testable_copy(
        tmp_path, 'ProtectSystm=strict\nWatchdogSec=soon'))

    assert returncode != 0, stderr
    assert any("Unknown key 'ProtectSystm'" in line for line in ours), stderr
    assert any('soon' in line for line in ours), stderr


def test_unit_is_a_notify_service_with_a_watchdog():
    service = _service()

    assert service['Type'] == 'notify'
    # READY=1 and WATCHDOG=1 come from cotyledon's worker, not the master.
    assert service['NotifyAccess'] == 'all'
    assert re.fullmatch(r'[1-9][0-9]*s', service['WatchdogSec'])
    assert service['Restart'] == 'on-failure'


def test_unit_runs_the_daemon_as_mistral():
    service = _service()

    assert service['User'] == 'mistral'
    assert service['Group'] == 'mistral'
    assert service['ExecStart'] == (
        f'{INSTALLED_DAEMON} --config-file /etc/mistral/mistral.conf')
    assert service['ExecReload'] == '/bin/kill -HUP $MAINPID'


def test_unit_stops_gracefully():
    service = _service()

    # The master stops its worker; then SIGKILL for what is left.
    assert service['KillMode'] == 'mixed'
    timeout = re.fullmatch(r'([0-9]+)s', service['TimeoutStopSec'])
    assert timeout
    assert int(timeout.group(1)) > GRACEFUL_SHUTDOWN_TIMEOUT


def test_unit_is_sandboxed_but_can_write_its_state():
    service = _service()

    assert service['ProtectSystem'] == 'strict'
    assert service['NoNewPrivileges'] == 'yes'
    assert service['PrivateTmp'] == 'yes'
    assert service['ProtectHome'] == 'yes'
    assert service['CapabilityBoundingSet'] == ''
    assert service['StateDirectory'] == 'mistral-hotload'
    assert '/var/lib/mistral-hotload' in _all_values('ReadWritePaths')
    assert set(service['RestrictAddressFamilies'].split()) == {
        'AF_UNIX', 'AF_INET', 'AF_INET6'}
    # Probe children import user code that Mistral's executor runs without
    # this restriction; the mistral user is shared with Mistral itself.
    for absent in ('MemoryDenyWriteExecute', 'DynamicUser', 'RemoveIPC'):
        assert absent not in service
