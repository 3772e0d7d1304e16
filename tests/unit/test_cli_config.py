"""Flags and environment -> Config (pure: parse_config raises UsageError, nothing runs)."""

from __future__ import annotations

import pytest

from consul_reg.app.cli import UsageError, parse_config
from consul_reg.app.config import Config, read_token, TokenError
from consul_reg.mapping.validate import Limits
from consul_reg.mapping.check_targets import parse_allow_rule

TOKEN = "3f2a9c1e-7b4d-4c1a-9e2f-0123456789ab"


def test_new_flags_reach_config_and_mapping_settings():
    config = parse_config(["--hostname", "h1", "--max-services-per-container", "5", "--max-tags-per-service", "7",
                           "--max-tag-length", "9", "--max-value-length", "1000", "--allow-check-target",
                           "10.0.0.0/8:80,443", "--allow-check-target", "[::1]:9000", "--allow-check-method",
                           "put", "--no-container-env-file", "consul://127.0.0.1:8600"], {})
    assert config.limits == Limits(services_per_container=5, tags_per_service=7, tag_length=9, value_length=1000,
                                   tags_value_length=1000)
    assert config.allow_check_targets == (parse_allow_rule("10.0.0.0/8:80,443"), parse_allow_rule("[::1]:9000"))
    assert config.no_container_env_file
    settings = config.mapping_settings("10.0.0.5", "agent")
    assert settings.limits == config.limits
    policy = settings.checks.policy
    assert policy.methods == ("GET", "HEAD", "OPTIONS", "POST", "PUT")
    assert policy.agent_ports == (8500, 8600) and policy.agent_addresses == ("127.0.0.1",)
    assert policy.allow == config.allow_check_targets


def test_defaults():
    config = parse_config(["--hostname", "h1"], {})
    assert config.limits == Limits() and config.allow_check_targets == () and not config.no_container_env_file
    policy = config.check_policy(agent_addresses=("10.0.0.5",), agent_ports=(8501,))
    assert policy.agent_addresses == ("127.0.0.1", "10.0.0.5") and policy.agent_ports == (8500, 8501)
    remote = Config(hostname="h", registry_uris=("consul-tls://consul.example.com:8501",))
    assert remote.agent_http() == (("127.0.0.1", "consul.example.com"), (8500, 8501))
    unix = Config(hostname="h", registry_uris=("consul-unix:///run/consul.sock",))
    assert unix.agent_http() == (("127.0.0.1",), (8500,))


@pytest.mark.parametrize("args,reason", [
    (["--hostname", "a:b"], "may not hold ':'"),
    (["--hostname", "a/b"], "found '/'"),
    (["--hostname", "h" * 65], "at most 64"),
    (["--hostname", "h", "-ip", "1.2.3.4/x"], "-ip '1.2.3.4/x'"),
    (["--hostname", "h", "-envFile", "relative.env"], "must be absolute"),
    (["--hostname", "h", "--allow-check-target", "10.0.0.0/33"], "--allow-check-target '10.0.0.0/33'"),
    (["--hostname", "h", "--allow-check-target", "10.0.0.1:0"], "ports must be 1-65535"),
    (["--hostname", "h", "--allow-check-method", "P UT"], "not an HTTP method"),
    (["--hostname", "h", "--max-services-per-container", "0"], "must be at least 1"),
    (["--hostname", "h", "--max-tags-per-service", "-1"], "must be at least 0"),
    (["--hostname", "h", "-tags", "{{ matchFirstElement .Name .Config.Env }}"], "string literal"),
    (["--hostname", "h", "-tags", '{{ matchFirstElement "(" .Config.Env }}'], "bad regular expression"),
])
def test_usage_errors(args, reason):
    with pytest.raises(UsageError, match=None) as raised:
        parse_config(args, {})
    assert reason in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("bad", [TOKEN + "\n" + TOKEN, TOKEN[:8] + " " + TOKEN[8:], TOKEN + "\x1b[2J" + "x",
                                 TOKEN + "é"])
def test_token_with_whitespace_or_control_characters_is_refused_unshown(tmp_path, bad):
    for environ in ({"CONSUL_HTTP_TOKEN": bad}, {"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "token")}):
        (tmp_path / "token").write_text(bad + "\n")
        with pytest.raises(UsageError) as raised:
            parse_config(["--hostname", "h"], environ)
        message = str(raised.value)
        assert "Refused; the token is not shown" in message
        for part in (TOKEN, TOKEN[:8], TOKEN[-12:], repr(bad)[1:-1]):
            assert part not in message


def test_good_tokens_are_kept_and_trimmed(tmp_path):
    (tmp_path / "token").write_text(f"  {TOKEN}\n\n")
    assert read_token({"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "token")}) == (TOKEN, str(tmp_path / "token"))
    assert read_token({"CONSUL_HTTP_TOKEN": f" {TOKEN} "}) == (TOKEN, None)


def test_huge_token_file_is_refused(tmp_path):
    (tmp_path / "token").write_text("a" * 10_000)
    with pytest.raises(TokenError, match="over 4096 bytes"):
        read_token({"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "token")})
