"""Tests for system.exec, with real subprocesses (no cloud involved)."""

from __future__ import annotations

import pathlib
import time

import pytest
from mistral_lib.exceptions import ActionException

from hotload_actions import system


def run(cmd, **kwargs):
    return system.Exec(cmd, **kwargs).run(context=None)


def test_returns_stdout_as_text():
    out = run("echo hello world")
    assert out == "hello world\n"
    assert isinstance(out, str)


def test_no_shell_expansion():
    assert run("echo $HOME *") == "$HOME *\n"


def test_quotes_are_honoured():
    assert run("printf '%s|%s\\n' \"a b\" c") == "a b|c\n"


def test_one_pipe():
    assert run("printf 'alpha\\nbeta\\ngamma\\n' | grep -v beta") == (
        "alpha\ngamma\n"
    )


def test_quoted_and_escaped_pipes_are_arguments():
    assert run("echo 'a|b' \"c|d\" e\\|f") == "a|b c|d e|f\n"


def test_first_command_stopped_by_sigpipe_is_fine():
    assert run("yes | head -n 2") == "y\ny\n"


def test_stdin_is_empty():
    assert run("cat", timeout=5) == ""


def test_timeout_kills_the_command():
    with pytest.raises(ActionException) as exc:
        run("sleep 30", timeout=0.2)
    assert str(exc.value) == "command timed out after 0.2s: sleep 30"


def test_timeout_covers_the_whole_pipeline():
    with pytest.raises(ActionException, match="timed out after 0.2s"):
        run("sleep 30 | cat", timeout=0.2)


def test_timeout_kills_what_the_command_started(tmp_path):
    pidfile = tmp_path / "pid"
    with pytest.raises(ActionException, match="timed out"):
        run(f"sh -c 'sleep 30 & echo $! > {pidfile}; wait'", timeout=1)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        pass  # SIGKILL was sent already; this only waits for delivery
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_non_zero_exit_reports_code_and_stderr():
    with pytest.raises(ActionException) as exc:
        run("ls /nonexistent-hotload-dir")
    message = str(exc.value)
    assert message.startswith(
        "command 'ls /nonexistent-hotload-dir' exited with code 2; stderr: "
    )
    assert "No such file or directory" in message


def test_failing_first_command_of_a_pipe_fails():
    with pytest.raises(ActionException) as exc:
        run("sh -c 'echo oops >&2; exit 3' | cat")
    assert str(exc.value) == (
        "command \"sh -c 'echo oops >&2; exit 3'\" exited with code 3; "
        "stderr: oops"
    )


def test_failing_last_command_of_a_pipe_fails():
    with pytest.raises(ActionException, match="'grep nothing' exited with"):
        run("echo something | grep nothing")


def test_unknown_command():
    with pytest.raises(ActionException, match="cannot run 'no-such-cmd-x'"):
        run("no-such-cmd-x --help")


def test_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("OS_PASSWORD", "s3cret")
    out = run("env")
    assert "s3cret" not in out
    assert sorted(line.split("=")[0] for line in out.splitlines()) == [
        "HOME",
        "LANG",
        "PATH",
    ]


def test_undecodable_output_is_replaced():
    assert run("printf 'caf\\351'") == "caf\ufffd"


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        ("a | b | c", "at most one '|'"),
        ("echo a || echo b", "operator '[|][|]'"),
        ("echo a |", "empty command"),
        ("| grep x", "empty command"),
        ("echo 'unclosed", "cannot parse"),
        ("echo a >out", "operator '>'"),
        ("echo a; rm -rf /tmp/x", "operator ';'"),
        ("sleep 1 && echo a", "operator '&'"),
        ("sort < /etc/passwd", "operator '<'"),
    ],
)
def test_refused_command_lines(cmd, message):
    with pytest.raises(ActionException, match=message):
        run(cmd)


def test_redirection_is_refused_not_run(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(ActionException, match="operator '>'"):
        run(f"echo a > {target}")
    assert not target.exists()


def test_quoted_operators_are_arguments():
    assert run("echo '>' \"a;b\" '&&'") == "> a;b &&\n"


@pytest.mark.parametrize("timeout", [-1, "soon"])
def test_bad_timeout(timeout):
    with pytest.raises(ActionException, match="timeout must be"):
        run("echo x", timeout=timeout)


def test_zero_timeout_means_no_limit():
    assert run("echo x", timeout=0) == "x\n"
