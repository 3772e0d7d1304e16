"""-tags in Go-template form: registrator 7.4's functions, evaluated safely."""

from __future__ import annotations

import pytest

from consul_reg.mapping.services import MappingSettings, map_container
from consul_reg.mapping.tags_template import Template, TemplateError

CONTAINER = {
    "Id": "e20f9c1a76565d62ae24a3bb877b17b862b6eab94f4e95a0e07ccf25087aaf4f",
    "Name": "/web.1",
    "Image": "sha256:abc",
    "Config": {"Hostname": "e20f9c1a7656", "Image": "team/web:1.2",
               "Env": ["ENV_NAME=test", "SERVICE_NAME=foo", "SERVICE_PORT=80"],
               "Labels": {"com.amazonaws.ecs.task-arn": "arn:aws:ecs:region:1:task/368f4403-0ee4",
                          "team": "Payments"}},
    "HostConfig": {"NetworkMode": "default"},
    "NetworkSettings": {"IPAddress": "172.17.0.5", "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "1"}]},
                        "Networks": {"bridge": {"IPAddress": "172.17.0.5"}}},
}


@pytest.mark.parametrize("text,expected", [
    ("static,tags", "static,tags"),
    ("container_id={{ .ID }}", "container_id=" + CONTAINER["Id"]),
    ("id={{ strSlice .ID 0 12 }}", "id=e20f9c1a7656"),
    ('ecs_task_id={{ mIndex "com.amazonaws.ecs.task-arn" .Config.Labels | splitIndex -1 "/" }}',
     "ecs_task_id=368f4403-0ee4"),
    ('{{ join "," .Config.Env | toLower }}', "env_name=test,service_name=foo,service_port=80"),
    ('{{ matchFirstElement "^SERVICE_NAME=" .Config.Env | toLower }}', "service_name=foo"),
    ('{{ matchAllElements "^SERVICE_" .Config.Env | join "," | toLower }}', "service_name=foo,service_port=80"),
    ('team={{ index .Config.Labels "team" | toLower }}', "team=payments"),
    ('first={{ sIndex 0 .Config.Env }},last={{ sIndex -1 .Config.Env }}', "first=ENV_NAME=test,last=SERVICE_PORT=80"),
    ('{{ replace "/" "" .Name | toUpper }}', "WEB.1"),
    ('{{ split ":" .Config.Image | sIndex 1 }}', "1.2"),
    ("ip={{ .NetworkSettings.IPAddress }},mode={{ .HostConfig.NetworkMode }}", "ip=172.17.0.5,mode=default"),
    ('{{ toUpper (mIndex "team" .Config.Labels) }}', "PAYMENTS"),
])
def test_render(text, expected):
    assert Template(text).render(CONTAINER) == expected


@pytest.mark.parametrize("text,message", [
    ('{{ httpGet "http://x" }}', "left out on purpose"),
    ('{{ jsonParse .ID }}', "left out on purpose"),
    ("{{ nope .ID }}", "unknown function"),
    ("{{ .ID ", "unclosed action"),
    ("{{ (toUpper .ID }}", r"unclosed '\('"),
    ("{{ .ID | }}", "empty command"),
])
def test_parse_errors(text, message):
    with pytest.raises(TemplateError, match=message):
        Template(text)


def test_runtime_error_is_a_warning_for_that_container():
    settings = MappingSettings(hostname="h", tags_template=Template("x={{ .Config.Nope }},{{ sIndex 9 .Config.Env }}"))
    records = map_container(CONTAINER, settings)
    assert records.services and records.services[0].tags == ()
    assert any("-tags template: no field .Config.Nope" in w for w in records.warnings)


def test_template_tags_are_added_per_container():
    settings = MappingSettings(hostname="h", tags_template=Template('team={{ mIndex "team" .Config.Labels }},x'))
    assert map_container(CONTAINER, settings).services[0].tags == ("team=Payments", "x")


# -- regular expressions and literals (issue 11) --------------------------------------

@pytest.mark.parametrize("text", [
    '{{ matchFirstElement .Config.Hostname .Config.Env }}',  # a pattern from container data
    '{{ matchAllElements (index .Config.Labels "re") .Config.Env }}',
    '{{ "^x" | matchFirstElement .Config.Env }}',  # piped: the pattern would be the last argument
    '{{ matchFirstElement }}',
])
def test_patterns_must_be_literals_in_the_template(text):
    with pytest.raises(TemplateError, match="string literal written in the template"):
        Template(text)


def test_bad_pattern_is_a_parse_error():
    with pytest.raises(TemplateError, match="bad regular expression"):
        Template('{{ matchFirstElement "(a" .Config.Env }}')
    with pytest.raises(TemplateError, match="bad regular expression"):  # backreferences: not RE2 (nor Go)
        Template('{{ matchFirstElement "(a)\\\\1" .Config.Env }}')


def test_catastrophic_pattern_on_container_data_is_linear():
    """Python's re took 9 s on 28 characters and doubles per character; RE2 has no backtracking.
    Structural, not timed: 100,000 characters through the pattern Go's regexp would also accept."""
    container = {**CONTAINER, "Config": {**CONTAINER["Config"], "Env": ["a" * 100_000 + "!", "aaa"]}}
    assert Template('{{ matchFirstElement "^(a+)+$" .Config.Env }}').render(container) == "aaa"
    assert Template('{{ matchAllElements "^(a|aa)+$" .Config.Env | join "," }}').render(container) == "aaa"


def test_regex_digit_class_is_ascii_as_in_go():
    container = {**CONTAINER, "Config": {**CONTAINER["Config"], "Env": ["X=٣", "Y=3"]}}
    assert Template('{{ matchFirstElement "=\\\\d$" .Config.Env }}').render(container) == "Y=3"


@pytest.mark.parametrize("literal,expected", [
    ('"équipe"', "équipe"),
    ('"日本"', "日本"),
    ('"a\\nb"', "a\nb"),
    ('"a\\tb"', "a\tb"),
    ('"q\\"q"', 'q"q'),
    ('"b\\\\s"', "b\\s"),
    ('"\\x41"', "A"),
    ('"\\101"', "A"),
    ('"\\u00e9"', "é"),
    ('"\\U0001F600"', "\U0001F600"),
    ('"\\xc3\\xa9"', "é"),  # \x escapes are bytes, as in Go
    ("`raw\\n`", "raw\\n"),
])
def test_string_literals_keep_unicode_and_go_escapes(literal, expected):
    assert Template("{{ " + literal + " }}").render(CONTAINER) == expected


@pytest.mark.parametrize("literal", ['"\\q"', '"\\x4"', '"\\u12"', '"\\ud800"', '"\\777"', '"\\U00110000"'])
def test_bad_escapes_are_parse_errors(literal):
    with pytest.raises(TemplateError):
        Template("{{ " + literal + " }}")


def test_template_values_are_bounded():
    settings_template = Template('{{ replace "" "xxxxxxxxxxxxxxxx" .ID | replace "" "yyyyyyyyyyyyyyyy" }}')
    with pytest.raises(TemplateError, match="more than"):
        settings_template.render({**CONTAINER, "Id": "z" * 10_000})


def test_rendered_tags_over_the_bound_are_dropped_with_a_warning():
    container = {**CONTAINER, "Config": {**CONTAINER["Config"], "Env": ["E=" + "v" * 40_000]}}
    settings = MappingSettings(hostname="h", tags_template=Template('{{ join "," .Config.Env }}'))
    records = map_container(container, settings)
    assert records.services[0].tags == ()
    assert any("-tags template: rendered" in w for w in records.warnings)
