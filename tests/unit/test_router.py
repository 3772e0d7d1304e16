"""The router: each message's actions, with and without a full pass in the same batch."""

from __future__ import annotations

from consul_reg.core.messages import AgentBack, CheckMissing, DockerEvent, DockerReconnected, Reload, Start, Stop
from consul_reg.core.records import AgentInfo
from consul_reg.sync.router import route


def ev(cid: str, action: str, exitCode: str = "", signal: str = "") -> DockerEvent:  # noqa: N803 (Docker's name)
    return DockerEvent(cid, action, 5, exit_code=exitCode, signal=signal)


AGENT = AgentInfo("1.8.7", "node", "node-1", "127.0.0.1", True)


def test_start_refreshes_and_ends_reaps() -> None:
    actions = route([ev("a", "start")])
    assert actions.refresh == {"a"} and actions.restarted == {"a"} and actions.report_status == {"a"}
    assert not actions.full_reason and not actions.deaths


def test_the_last_event_decides_between_death_and_refresh() -> None:
    died = route([ev("a", "start"), ev("a", "die", exitCode="3")])
    assert died.deaths == (("a", "3"),) and died.refresh == frozenset()
    back = route([ev("a", "die", exitCode="3"), ev("a", "start")])
    assert back.deaths == () and back.refresh == {"a"} and back.restarted == {"a"}


def test_kill_drains_unless_its_death_is_in_the_same_batch() -> None:
    assert route([ev("a", "kill", signal="15")]).drains == (("a", "15"),)
    assert route([ev("a", "kill", signal="15"), ev("a", "die", exitCode="143")]).drains == ()
    assert route([ev("a", "kill", signal="15")]).refresh == frozenset()  # a kill is never inspected


def test_per_event_actions_survive_a_full_pass_in_the_same_batch() -> None:
    for message, reason in ((Reload(), "reload"), (Start(), "start"), (DockerReconnected(), "docker reconnected"),
                            (AgentBack(AGENT), "agent back")):
        actions = route([ev("a", "kill", signal="TERM"), ev("b", "die", exitCode="0"), ev("c", "restart"),
                         ev("d", "health_status"), message])
        assert actions.full_reason == reason
        assert actions.drains == (("a", "TERM"),)
        assert actions.deaths == (("b", "0"),)
        assert actions.restarted == {"c"}
        assert actions.report_status == {"c", "d"}
        assert actions.refresh == {"c", "d"}


def test_daemon_messages() -> None:
    actions = route([CheckMissing("s1"), Reload(), Stop()])
    assert actions.missing_checks == {"s1"} and actions.full_reason == "reload" and actions.stop
    back = route([AgentBack(AGENT)])
    assert back.agent_back and back.identity == AGENT and back.full_reason == "agent back"
    assert route([CheckMissing("s1")]).full_reason == ""


def test_unknown_actions_and_empty_batches_do_nothing() -> None:
    assert route([ev("a", "exec_start: sh"), ev("a", "attach")]) == route([])
    assert not route([]).stop


def test_a_sigkill_is_no_drain_its_death_follows_at_once() -> None:
    for signal in ("9", "SIGKILL", "KILL", " sigkill "):
        actions = route([ev("a", "kill", signal=signal)])
        assert actions.drains == () and actions.refresh == frozenset() and actions.deaths == ()
    assert route([ev("a", "kill", signal="15")]).drains == (("a", "15"),)  # a trappable one still drains


def test_an_event_keeps_only_the_attributes_read_and_never_the_labels() -> None:
    from consul_reg.docker.events import message_from_event

    labels = {f"label{n}": "x" * 1000 for n in range(200)}
    event = {"Type": "container", "Action": "die", "timeNano": 7,
             "Actor": {"ID": "c1", "Attributes": {**labels, "exitCode": "137", "name": "web", "signal": "9"}}}
    message = message_from_event(event)
    assert message == DockerEvent("c1", "die", 7, exit_code="137", signal="9", name="web")  # nothing else is kept
    assert route([message]).deaths == (("c1", "137"),)
    assert route([message]).names == (("c1", "web"),)


def test_an_events_name_is_kept_only_when_shaped_as_a_containers_name() -> None:
    from consul_reg.docker.events import message_from_event

    for name in ("", "-web", "web/../x", "a" * 129, "web\nFAKE", "we b", 7, None):
        event = {"Type": "container", "Action": "start", "Actor": {"ID": "c1", "Attributes": {"name": name}}}
        message = message_from_event(event)
        assert message is not None and message.name == "", name
    event = {"Type": "container", "Action": "start", "Actor": {"ID": "c1", "Attributes": {"name": "web.v2_1-a"}}}
    message = message_from_event(event)
    assert message is not None and message.name == "web.v2_1-a"


class Chunks:
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    def read1(self, size: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


def test_the_event_stream_is_decoded_however_it_is_cut() -> None:
    from consul_reg.docker.events import _json_lines

    text = '{"Action":"start","id":"a"}\n{"Action":"die","Actor":{"Attributes":{"n":"é"}}}{"x":[1,2]}  \n'.encode()
    for size in (1, 2, 3, 7, len(text)):
        pieces = [text[i:i + size] for i in range(0, len(text), size)]
        assert list(_json_lines(Chunks(pieces))) == [
            {"Action": "start", "id": "a"}, {"Action": "die", "Actor": {"Attributes": {"n": "é"}}}, {"x": [1, 2]}]


def test_an_event_that_never_ends_is_refused_within_bounds() -> None:
    import pytest

    from consul_reg.docker.events import MAX_EVENT_BYTES, _json_lines

    pieces = [b'{"Action":"start","junk":"'] + [b"x" * 65536] * (MAX_EVENT_BYTES // 65536 + 2)
    with pytest.raises(ValueError, match="longer than"):
        list(_json_lines(Chunks(pieces)))


def test_the_listing_key_ignores_the_uptime_text_and_nothing_else() -> None:
    from consul_reg.sync.reading import listing_key

    entry = {"Id": "c1", "Names": ["/web"], "Labels": {"SERVICE_NAME": "web"}, "State": "running",
             "Status": "Up 5 minutes", "Ports": [{"PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}]}
    key = listing_key(entry)
    assert listing_key({**entry, "Status": "Up 6 minutes"}) == key and len(key) == 32
    assert listing_key({**entry, "Status": "Up 6 minutes (healthy)"}).endswith("(healthy)")
    for changed in ({"Labels": {"SERVICE_NAME": "shop"}}, {"State": "paused"}, {"Names": ["/web2"]},
                    {"Ports": [{"PrivatePort": 80, "PublicPort": 8081, "Type": "tcp"}]}):
        assert listing_key({**entry, **changed}) != key, changed


def test_a_kill_whose_container_starts_again_in_the_same_batch_needs_no_drain() -> None:
    restart = route([ev("a", "kill", signal="15"), ev("a", "die", exitCode="143"), ev("a", "start"),
                     ev("a", "restart")])
    assert restart.drains == () and restart.restarted == {"a"} and restart.refresh == {"a"}
    assert route([ev("a", "restart"), ev("a", "kill", signal="15")]).drains == (("a", "15"),)
