"""validate.py: identifier rules, address shapes and the check-target policy, as pure functions."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consul_reg.mapping.validate import address_problem, hostname_problem, identifier_problem, normal_host, parse_ip, squats_host_namespace

from consul_reg.mapping.check_targets import CheckPolicy, OwnEndpoints, check_target_problem, parse_allow_rule

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


# The container 172.17.0.5 (ports 80 and 8500 inside). The daemon registers at 10.0.0.5 and, as
# with -ip 127.0.0.1 or a dev agent, at 127.0.0.1: port 32768 is published on every address. Its
# other bindings are its own exact pairs: 10.0.0.7:32769, and 127.0.0.2:2375, a loopback address
# the operator did not choose.
OWN = OwnEndpoints(container_addresses=frozenset({"172.17.0.5"}), container_ports=frozenset({80, 8500}),
                   host_pairs=frozenset({("10.0.0.5", 32768), ("127.0.0.1", 32768), ("10.0.0.7", 32769),
                                         ("127.0.0.2", 2375)}),
                   chosen_addresses=frozenset({"10.0.0.5", "127.0.0.1"}))
OWN_PAIRS = {("10.0.0.5", 32768), ("127.0.0.1", 32768), ("10.0.0.7", 32769)}  # what the default policy opens
POLICY = CheckPolicy(agent_addresses=("127.0.0.1",), agent_ports=(8500, 8501, 8502, 8600))
LOOPBACK_NETS = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "0.0.0.0/8", "::1/128", "::/128")]


@pytest.mark.parametrize("host,port,allowed", [
    ("172.17.0.5", 80, True),  # the container's own IP and port
    ("172.17.0.5", 8500, True),  # the container's own port 8500 is not the agent's
    ("10.0.0.5", 32768, True),  # the daemon's host address and the port published on every address
    ("127.0.0.1", 32768, True),  # the same at the loopback address the daemon registers at
    ("::ffff:10.0.0.5", 32768, True),
    ("10.0.0.7", 32769, True),  # a binding's own (HostIp, HostPort)
    ("172.17.0.5", 32768, False),  # a host port on the container's IP: not this container's
    ("10.0.0.5", 80, False),  # a container port on the host address: another service of the host
    ("10.0.0.7", 32768, False),  # crossed: one binding's address with another's port
    ("10.0.0.5", 32769, False),
    ("127.0.0.1", 2375, False),  # crossed onto loopback: the host's Docker API
    ("::ffff:127.0.0.1", 2375, False),
    ("127.0.0.2", 2375, False),  # its own binding, but on a loopback address the operator did not choose
    ("127.0.0.1", 32769, False),
    ("0.0.0.0", 32768, False),  # reaches the host itself
    ("::", 32768, False),
    ("::1", 32768, False),
    ("localhost", 32768, False),
    ("127.0.0.1", 8500, False),  # the agent's API
    ("10.0.0.5", 8500, False),
    ("10.0.0.5", 8502, False),  # the agent's gRPC, HTTPS and DNS ports too
    ("10.0.0.5", 8501, False),
    ("127.0.0.1", 8600, False),
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


def test_a_crossed_pair_is_refused_with_the_reason():
    problem = check_target_problem("10.0.0.7", 32768, OWN, POLICY)
    assert problem == "port 32768 is not a port of this container at 10.0.0.7; allow it with --allow-check-target"
    assert "loopback" in check_target_problem("127.0.0.1", 2375, OWN, POLICY)
    assert "agent's own" in check_target_problem("10.0.0.5", 8502, OWN, POLICY)


def test_allow_rules_open_what_they_name_and_no_more():
    policy = CheckPolicy(allow=(parse_allow_rule("10.0.0.0/24:5432"), parse_allow_rule("db.example.com")))
    assert check_target_problem("10.0.0.99", 5432, OWN, policy) is None
    assert check_target_problem("10.0.0.99", 5433, OWN, policy) is not None
    assert check_target_problem("DB.example.com.", 1234, OWN, policy) is None
    assert check_target_problem("other.example.com", 1234, OWN, policy) is not None


def test_link_local_loopback_and_the_agent_need_a_rule_that_names_them():
    everything = CheckPolicy(allow=(parse_allow_rule("0.0.0.0/0"), parse_allow_rule("::/0")))
    assert check_target_problem("8.8.8.8", 53, OWN, everything) is None
    assert "link-local" in check_target_problem("169.254.169.254", 80, OWN, everything)
    assert "agent" in check_target_problem("127.0.0.1", 8500, OWN, everything)
    for host in ("127.0.0.1", "127.0.0.2", "0.0.0.0", "::1", "::", "::ffff:127.0.0.1"):
        assert "loopback" in check_target_problem(host, 2375, OWN, everything), host
    metadata = CheckPolicy(allow=(parse_allow_rule("169.254.169.254/32:80"),))
    assert check_target_problem("169.254.169.254", 80, OWN, metadata) is None
    assert check_target_problem("169.254.169.254", 81, OWN, metadata) is not None
    agent = CheckPolicy(allow=(parse_allow_rule("127.0.0.1/32:8500"),))
    assert check_target_problem("127.0.0.1", 8500, OWN, agent) is None
    # A rule listing the port opens the agent's port, on loopback only if it also names loopback.
    agent_port_anywhere = CheckPolicy(allow=(parse_allow_rule("0.0.0.0/0:8500"),))
    assert check_target_problem("10.0.0.5", 8500, OWN, agent_port_anywhere) is None
    assert "loopback" in check_target_problem("127.0.0.1", 8500, OWN, agent_port_anywhere)
    loopback = CheckPolicy(allow=(parse_allow_rule("127.0.0.0/8:2375"), parse_allow_rule("[::1]"),
                                  parse_allow_rule("localhost:9000")))
    assert check_target_problem("127.0.0.2", 2375, OWN, loopback) is None
    assert check_target_problem("127.0.0.2", 2376, OWN, loopback) is not None
    assert check_target_problem("::1", 1234, OWN, loopback) is None
    assert check_target_problem("localhost", 9000, OWN, loopback) is None
    assert check_target_problem("localhost", 9001, OWN, loopback) is not None


def _is_local(host: str) -> bool:
    address = parse_ip(host)
    if address is None:
        return normal_host(host) == "localhost" or normal_host(host).endswith(".localhost")
    return any(address in net for net in LOOPBACK_NETS if net.version == address.version)


pairs = st.tuples(st.sampled_from(["10.0.0.5", "10.0.0.7", "127.0.0.1", "127.0.0.2", "::1", "fd00::5"]),
                  st.sampled_from([80, 2375, 8500, 32768, 32769]))


@given(host=st.one_of(st.ip_addresses().map(str), st.text(max_size=30), st.sampled_from(
           ["127.0.0.1", "127.0.0.2", "::ffff:127.0.0.1", "0.0.0.0", "::", "localhost", "10.0.0.5", "10.0.0.7"])),
       port=st.one_of(st.integers(1, 65535), st.sampled_from([80, 2375, 8500, 8502, 8600, 32768, 32769])))
def test_policy_never_raises_and_refuses_link_local_and_the_agent(host, port):
    problem = check_target_problem(host, port, OWN, POLICY)
    address = parse_ip(host)
    if address is not None and (address.is_link_local or str(address).startswith("169.254.")):
        assert problem is not None
    if port in POLICY.agent_ports and normal_host(host) != "172.17.0.5":
        assert problem is not None
    if problem is None:
        assert (normal_host(host), port) in {("172.17.0.5", 80), ("172.17.0.5", 8500)} | OWN_PAIRS


@settings(max_examples=1000)
@given(own_pairs=st.frozensets(pairs, max_size=6), chosen=st.frozensets(st.sampled_from(
           ["10.0.0.5", "127.0.0.1", "::1"]), max_size=2), target=pairs,
       rules=st.lists(st.sampled_from(["0.0.0.0/0", "::/0", "10.0.0.0/8:80", "127.0.0.0/8:2375", "[::1]",
                                       "0.0.0.0/0:8500", "127.0.0.1/32:8500"]), max_size=3))
def test_the_pair_rule(own_pairs, chosen, target, rules):
    """Allowed only as an exact pair of the container's (loopback: at an address the daemon
    registers at), or by a rule covering it; loopback only by a rule that names loopback; the
    agent's port only by a rule that lists it; never the cross product of addresses and ports."""
    own = OwnEndpoints(host_pairs=own_pairs, chosen_addresses=chosen)
    parsed = [parse_allow_rule(r) for r in rules]
    host, port = target
    problem = check_target_problem(host, port, own, CheckPolicy(allow=tuple(parsed), agent_ports=(8500,)))
    covering = [r for r in parsed if r.covers(host, port)]
    own_pair = target in own_pairs and (not _is_local(host) or host in chosen)
    naming_local = [r for r in covering if r.network is not None and any(
        r.network.version == n.version and r.network.subnet_of(n) for n in LOOPBACK_NETS)]
    if port == 8500:
        expected = any(r.names_port(8500) for r in covering) and (
            not _is_local(host) or bool(naming_local) or own_pair)
    elif _is_local(host):
        expected = bool(naming_local) or own_pair
    else:
        expected = bool(covering) or own_pair
    assert (problem is None) is expected, (target, own_pairs, chosen, rules, problem)
