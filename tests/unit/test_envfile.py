import pytest

from consul_reg.mapping.env_file import parse


def test_parse_env_file():
    parsed = parse("# comment\n\nexport SERVICE_TAGS='a,b'\nSERVICE_NAME=\"web\"\nOTHER=1\nSERVICE_X = y \n")
    assert parsed.pairs == (("SERVICE_TAGS", "a,b"), ("SERVICE_NAME", "web"), ("SERVICE_X", "y"))
    assert parsed.problems == ()


def test_malformed_lines_are_reported():
    parsed = parse("SERVICE_OK=1\nno equals sign\n=value\n")
    assert parsed.pairs == (("SERVICE_OK", "1"),)
    assert len(parsed.problems) == 2 and parsed.problems[0].startswith("line 2")


def test_a_bad_line_is_named_by_its_number_and_never_by_its_text():
    """The file may hold other secrets: dockerd reads it as root from any path named."""
    parsed = parse("SERVICE_TAGS=a\nhunter2-token\n=s3cret-value\nDB PASSWORD=pa55word\n")
    assert parsed.problems == ("line 2: not KEY=value (no '=')", "line 3: not KEY=value (no key before '=')",
                               "line 4: not KEY=value (a space in the key)")
    assert not any(secret in problem for problem in parsed.problems
                   for secret in ("hunter2", "s3cret", "pa55word", "PASSWORD"))


def test_a_file_of_bad_lines_reports_a_few_and_counts_the_rest():
    parsed = parse("".join(f"secret-{n}\n" for n in range(5000)) + "SERVICE_NAME=web\n")
    assert parsed.problems[:MAX_PROBLEMS_SHOWN] == tuple(f"line {n}: not KEY=value (no '=')"
                                                         for n in range(1, MAX_PROBLEMS_SHOWN + 1))
    assert parsed.problems[MAX_PROBLEMS_SHOWN:] == (f"and {5000 - MAX_PROBLEMS_SHOWN} more line(s) not KEY=value",)
    assert parsed.pairs == (("SERVICE_NAME", "web"),)


from consul_reg.mapping.env_file import MAX_PROBLEMS_SHOWN, env_file_path, path_problem  # noqa: E402


def holder(labels=None, env=None):
    return {"Config": {"Labels": labels or {}, "Env": env or []}}


def test_container_path_wins_unless_refused():
    assert env_file_path(holder({"SERVICE_ENV_FILE": " /run/a.env "}), "/etc/b.env").path == "/run/a.env"
    assert env_file_path(holder(env=["SERVICE_ENV_FILE=/run/e.env"]), None).path == "/run/e.env"
    labelled = holder({"SERVICE_env_file": "/l", "service_env_file": "/x"}, ["SERVICE_ENV_FILE=/e"])
    assert env_file_path(labelled, None).path == "/l"
    assert env_file_path(holder(), "/etc/b.env").path == "/etc/b.env"
    assert env_file_path(holder(), None).path == ""
    refused = env_file_path(holder({"SERVICE_ENV_FILE": "/run/a.env"}), "/etc/b.env", allow_container_path=False)
    assert refused.path == "/etc/b.env" and "--no-container-env-file" in refused.problem
    assert "'SERVICE_ENV_FILE'" in refused.problem and "using -envFile /etc/b.env" in refused.problem


@pytest.mark.parametrize("path,reason", [("relative/x", "absolute"), ("/a\x00b", "control"), ("/a\nb", "control"),
                                         ("/" + "a" * 1024, "at most 1024")])
def test_bad_container_paths_fall_back_with_a_warning(path, reason):
    chosen = env_file_path(holder({"SERVICE_ENV_FILE": path}), None)
    assert chosen.path == "" and reason in chosen.problem and "no env file for this container" in chosen.problem
    assert path_problem(path) is not None


def test_garbage_container_dicts():
    for garbage in ({}, {"Config": None}, {"Config": {"Labels": [], "Env": "x"}}, {"Config": {"Env": [1, None]}}):
        assert env_file_path(garbage, "/x").path == "/x"
