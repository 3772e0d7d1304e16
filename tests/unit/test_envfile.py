from consul_reg.envfile import parse


def test_parse_env_file():
    parsed = parse("# comment\n\nexport SERVICE_TAGS='a,b'\nSERVICE_NAME=\"web\"\nOTHER=1\nSERVICE_X = y \n")
    assert parsed.pairs == (("SERVICE_TAGS", "a,b"), ("SERVICE_NAME", "web"), ("SERVICE_X", "y"))
    assert parsed.problems == ()


def test_malformed_lines_are_reported():
    parsed = parse("SERVICE_OK=1\nno equals sign\n=value\n")
    assert parsed.pairs == (("SERVICE_OK", "1"),)
    assert len(parsed.problems) == 2 and parsed.problems[0].startswith("line 2")
