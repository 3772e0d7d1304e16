"""Argument errors exit 2 with a one-line reason (the real executable)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("args,reason", [
    (["-ttl", "30"], "-ttl and -ttl-refresh must be set together"),
    (["-ttl-refresh", "10"], "-ttl and -ttl-refresh must be set together"),
    (["-ttl", "10", "-ttl-refresh", "10"], "-ttl (10) must be greater than -ttl-refresh (10)"),
    (["-retry-interval", "0"], "-retry-interval must be greater than 0"),
    (["-deregister", "sometimes"], "-deregister must be 'always' or 'on-success'"),
    (["etcd2://127.0.0.1:2379/x"], "unknown registry URI scheme 'etcd2'"),
    (["consul://127.0.0.1:8500", "-internal"], "option -internal comes after the registry URI"),
    (["-nope"], "unrecognized arguments: -nope"),
    (["--hostname", "../../leave"], "--hostname '../../leave': a host name may only hold"),
    (["--hostname", "a:b"], "may not hold ':'"),
    (["--allow-check-target", "169.254.0.0/33"], "--allow-check-target '169.254.0.0/33'"),
    (["--max-services-per-container", "0"], "--max-services-per-container must be at least 1"),
    (["-tags", "{{ matchFirstElement .Name .Config.Env }}"], "takes its regular expression as a string literal"),
])
def test_argument_errors_exit_2(args, reason):
    result = subprocess.run([sys.executable, "-m", "consul_reg", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], result.stderr


def test_both_spellings_are_accepted():
    from consul_reg.app.cli import parse_config

    single = parse_config(["-ip", "1.2.3.4", "-internal", "-tags", "a,b", "-resync", "0", "--hostname", "h"], {})
    double = parse_config(["--ip=1.2.3.4", "--internal", "--tags", "a,b", "--resync", "0", "--hostname", "h"], {})
    assert single == double
    assert single.host_ip == "1.2.3.4" and single.force_tags == ("a", "b") and single.resync_seconds == 0


def test_retry_attempts_give_up_with_status_1():
    result = subprocess.run([sys.executable, "-m", "consul_reg", "-retry-attempts", "2", "-retry-interval", "50",
                             "consul://127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "giving up after 2 tries" in result.stderr


def test_token_file_of_two_lines_is_refused_without_echoing_it(tmp_path):
    secret = "5e4a2b1c-9d8e-4f7a-b6c5-d4e3f2a1b0c9"
    token_file = tmp_path / "token"
    token_file.write_text(f"{secret}\n{secret}\n")
    result = subprocess.run([sys.executable, "-m", "consul_reg", "--hostname", "h", "consul://127.0.0.1:1"],
                            capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "CONSUL_HTTP_TOKEN_FILE": str(token_file)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the token holds whitespace" in lines[0], result.stderr
    for part in (secret, secret[:8], secret[-12:]):
        assert part not in result.stderr + result.stdout
