"""validate.py: identifier rules, address shapes and the check-target policy, as pure functions."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consul_reg.validate import CheckPolicy, OwnEndpoints, address_problem, check_target_problem, \
    hostname_problem, identifier_problem, normal_host, parse_allow_rule, parse_ip, squats_host_namespace

DOCUMENTED_SET = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


@pytest.mark.parametrize("value", ["web", "host1:web.1:80", "host1:web:53:udp", "https.12345", "a@b", "_x-", "..a",
                                   "a..b", "x" * 128, "...", ":"])
def test_identifiers_accepted(value):
    assert identifier_problem(value) is None


@pytest.mark.parametrize("value,reason", [
    ("", "must not be empty"),
    (".", "may not be '.'"),
    ("..", "may not be '..'"),
    ("../../leave", "found '/'"),
    ("x/../payments", "found '/'"),
    ("vault/core/master", "found '/'"),
    ("web\nforged log line", "found '\\n'"),
    ("web 1", "found ' '"),
    ("web\t", "found '\\t'"),
    ("%2e%2e", "found '%'"),
    ("x?y", "found '?'"),
    ("x#y", "found '#'"),
    ("é", "found 'é'"),
    ("web\x1b[31m", "found '\\x1b'"),
    ("ｗｅｂ", "found 'ｗ'"),  # fullwidth letters are not ASCII
    ("x" * 129, "at most 128 characters"),
])
def test_identifiers_refused(value, reason):
    problem = identifier_problem(value)
    assert problem is not None and reason in problem


def test_names_have_their_own_wording():
    assert "a service name" in identifier_problem("..", "service name")


@given(st.text(max_size=200))
def test_any_identifier_is_refused_or_within_the_documented_set(value):
    problem = identifier_problem(value)
    if problem is None:
        assert DOCUMENTED_SET.fullmatch(value) and value not in (".", "..")
        assert value.isascii() and "/" not in value and not any(c.isspace() for c in value)
    else:
        assert isinstance(problem, str) and problem


@given(st.text(alphabet="abc./%:@-_\n\x00 é", max_size=12))
def test_dot_segments_and_separators_never_pass(value):
    if identifier_problem(value) is None:
        assert value not in (".", "..") and not set(value) & set("/% \n\x00é")


@pytest.mark.parametrize("value,ok", [("host1", True), ("node-1.example.com", True), ("a:b", False),
                                      ("h" * 64, True), ("h" * 65, False), ("", False), ("with space", False)])
def test_hostname_rules(value, ok):
    assert (hostname_problem(value) is None) is ok


def test_squatting_is_case_insensitive_and_needs_the_separator():
    assert squats_host_namespace("Host1:web:80", "host1")
    assert not squats_host_namespace("host10:web:80", "host1")
    assert not squats_host_namespace("host1-web", "host1")


@pytest.mark.parametrize("text,expected", [
    ("10.0.0.1", "10.0.0.1"), ("[::1]", "::1"), ("::ffff:169.254.169.254", "169.254.169.254"),
    ("64:ff9b::a9fe:a9fe", "169.254.169.254"), ("2002:a9fe:a9fe::1", "169.254.169.254"),
    ("::169.254.169.254", "169.254.169.254"), ("::1", "::1"), ("fe80::1", "fe80::1"),
])
def test_ipv4_hidden_in_ipv6_is_unwrapped(text, expected):
    assert str(parse_ip(text)) == expected


@pytest.mark.parametrize("text,ok", [
    ("10.0.0.1", True), ("::1", True), ("db.example.com", True), ("localhost", True), ("web-1", True),
    ("db.example.com.", True),
    ("2852039166", False), ("0xa9fea9fe", False), ("169.254.169.0254", False), ("169.254.43518", False),
    ("169.254.169.254.", False), ("1.2.3", False), ("a b", False), ("a@169.254.169.254", False),
    ("169.254.169.254#", False), ("x/y", False), ("", False), ("-a.com", False), ("a..com", False),
    ("é.com", False), ("10.0.0.1:80", False), ("a" * 64 + ".com", False),
])
def test_addresses_are_ips_or_rfc1123_names(text, ok):
    assert (address_problem(text) is None) is ok


def test_normal_host_spellings():
    assert normal_host("DB.Example.com.") == "db.example.com"
    assert normal_host("::FFFF:10.0.0.1") == "10.0.0.1"


@pytest.mark.parametrize("text,network,hostname,ports", [
    ("10.0.0.0/8", "10.0.0.0/8", "", ()),
    ("10.1.2.3/8:80,443,9000-9100", "10.0.0.0/8", "", ((80, 80), (443, 443), (9000, 9100))),
    ("192.0.2.7:80", "192.0.2.7/32", "", ((80, 80),)),
    ("fd00::/8", "fd00::/8", "", ()),
    ("fd00::/8:80", "fd00::/8", "", ((80, 80),)),
    ("[::1]:8080", "::1/128", "", ((8080, 8080),)),
    ("::1", "::1/128", "", ()),
    ("::ffff:169.254.0.0/112", "169.254.0.0/16", "", ()),
    ("DB.example.com:5432", None, "db.example.com", ((5432, 5432),)),
])
def test_allow_rules_parse(text, network, hostname, ports):
    rule = parse_allow_rule(text)
    assert (str(rule.network) if rule.network else None, rule.hostname, rule.ports) == (network, hostname, ports)


@pytest.mark.parametrize("text", ["10.0.0.0/33", "10.0.0.1:", "10.0.0.1:0", "10.0.0.1:70000", "10.0.0.1:9-1",
                                  "10.0.0.1:http", "[::1", "[::1]x", "a b", "2852039166", "10.0.0.0/8:80,,443"])
def test_bad_allow_rules_are_refused(text):
    with pytest.raises(ValueError):
        parse_allow_rule(text)


OWN = OwnEndpoints(container_addresses=frozenset({"172.17.0.5"}), container_ports=frozenset({80, 8500}),
                   host_addresses=frozenset({"10.0.0.5", "127.0.0.1"}), host_ports=frozenset({32768}))
POLICY = CheckPolicy(agent_addresses=("127.0.0.1",), agent_ports=(8500,))


@pytest.mark.parametrize("host,port,allowed", [
    ("172.17.0.5", 80, True),  # the container's own IP and port
    ("172.17.0.5", 8500, True),  # the container's own port 8500 is not the agent's
    ("10.0.0.5", 32768, True),  # the daemon's host address and the published port
    ("127.0.0.1", 32768, True),
    ("::ffff:10.0.0.5", 32768, True),
    ("172.17.0.5", 32768, False),  # a host port on the container's IP: not this container's
    ("10.0.0.5", 80, False),  # a container port on the host address: another service of the host
    ("127.0.0.1", 8500, False),  # the agent's API
    ("10.0.0.5", 8500, False),
    ("0.0.0.0", 8500, False),
    ("localhost", 8500, False),
    ("169.254.169.254", 80, False),
    ("::ffff:169.254.169.254", 80, False),
    ("fe80::1", 80, False),
    ("10.0.0.99", 32768, False),  # another machine
    ("db.example.com", 32768, False),
    ("2852039166", 32768, False),
])
def test_default_policy(host, port, allowed):
    assert (check_target_problem(host, port, OWN, POLICY) is None) is allowed


def test_allow_rules_open_what_they_name_and_no_more():
    policy = CheckPolicy(allow=(parse_allow_rule("10.0.0.0/24:5432"), parse_allow_rule("db.example.com")))
    assert check_target_problem("10.0.0.99", 5432, OWN, policy) is None
    assert check_target_problem("10.0.0.99", 5433, OWN, policy) is not None
    assert check_target_problem("DB.example.com.", 1234, OWN, policy) is None
    assert check_target_problem("other.example.com", 1234, OWN, policy) is not None


def test_link_local_and_agent_need_a_rule_that_names_them():
    everything = CheckPolicy(allow=(parse_allow_rule("0.0.0.0/0"), parse_allow_rule("::/0")))
    assert check_target_problem("8.8.8.8", 53, OWN, everything) is None
    assert "link-local" in check_target_problem("169.254.169.254", 80, OWN, everything)
    assert "agent" in check_target_problem("127.0.0.1", 8500, OWN, everything)
    metadata = CheckPolicy(allow=(parse_allow_rule("169.254.169.254/32:80"),))
    assert check_target_problem("169.254.169.254", 80, OWN, metadata) is None
    assert check_target_problem("169.254.169.254", 81, OWN, metadata) is not None
    agent = CheckPolicy(allow=(parse_allow_rule("127.0.0.1/32:8500"),))
    assert check_target_problem("127.0.0.1", 8500, OWN, agent) is None


@given(host=st.one_of(st.ip_addresses().map(str), st.text(max_size=30)), port=st.integers(1, 65535))
def test_policy_never_raises_and_refuses_link_local_and_the_agent(host, port):
    problem = check_target_problem(host, port, OWN, POLICY)
    address = parse_ip(host)
    if address is not None and (address.is_link_local or str(address).startswith("169.254.")):
        assert problem is not None
    if port == 8500 and normal_host(host) != "172.17.0.5":
        assert problem is not None
    if problem is None:
        assert (normal_host(host), port) in {("172.17.0.5", 80), ("172.17.0.5", 8500), ("10.0.0.5", 32768),
                                              ("127.0.0.1", 32768)}
