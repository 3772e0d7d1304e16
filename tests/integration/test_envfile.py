"""The env file: SERVICE_* lines written by the app inside its container after
start, read through Docker's archive API, highest priority, key by key."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import status_args, wait_until

pytestmark = pytest.mark.integration


def write(container, text: str) -> None:
    container.exec_run(["sh", "-c", f"printf '{text}' > /tmp/new.env && mv /tmp/new.env /tmp/service.env"])


def reads_since(docker_client, container, since: float) -> int:
    """Reads of a file out of the container (Docker's archive-path events) that dockerd served after `since`."""
    events = docker_client.events(since=int(since), until=f"{time.time():.9f}", decode=True,
                                  filters={"container": container.id, "event": "archive-path"})
    return sum(1 for event in events if event["timeNano"] > since * 1e9)


def test_env_file_changes_registration_after_start(start_daemon, run_container, consul_api, hostname, docker_client):
    daemon = start_daemon("-ip", "192.0.2.1", "--env-file-interval", "0.5", *status_args())
    web = run_container(ports={"80/tcp": None}, labels={"SERVICE_ENV_FILE": "/tmp/service.env",
                                                        "SERVICE_TAGS": "traefik.enable=true,web"})
    service_id = f"{hostname}:{web.name}:80"
    wait_until(lambda: consul_api.services_of(hostname).get(service_id, {}).get("Tags") == ["traefik.enable=true",
                                                                                            "web"],
               message="registered from labels while the file is missing")
    assert not [line for line in daemon.log().splitlines() if "WARNING" in line and "env file" in line]  # missing
    write(web, "# the app takes itself out of Traefik\\nSERVICE_TAGS=web\\nSERVICE_VERSION=2\\n")
    service = wait_until(lambda: (s := consul_api.services_of(hostname).get(service_id)) and s["Tags"] == ["web"]
                         and s, message="tags replaced by the env file")
    assert service["Meta"]["version"] == "2"
    write(web, "SERVICE_TAGS=web\\nSERVICE_VERSION=2\\nSERVICE_ID=moved-" + hostname + "\\n")
    wait_until(lambda: set(consul_api.services_of(hostname)) == {f"moved-{hostname}"},
               message="new ID registered, old one removed")
    write(web, "this is not KEY=value at all\\n")
    daemon.wait_log("not KEY=value")
    daemon.full_pass_by_sighup()  # with -resync 0, a full pass asked by SIGHUP
    # Its re-read of the file (and the polls') are answered on reader threads and folded in later batches:
    # two reads served after the pass (one container's reads never overlap: the first one's answer is
    # posted before the second starts), then a new content, whose warning is logged after that answer.
    after_pass = time.time()
    wait_until(lambda: reads_since(docker_client, web, after_pass) >= 2, message="the file read again twice")
    write(web, "SERVICE_TAGS=web\\nnot a pair either\\n")
    daemon.wait_log("service.env: line 2: not KEY=value")
    assert set(consul_api.services_of(hostname)) == {f"moved-{hostname}"}  # the last good values stay
    assert daemon.log().count("service.env: line 1: not KEY=value") == 1  # one warning per change of content


def test_env_file_flag_applies_to_every_container(start_daemon, run_container, consul_api, hostname):
    start_daemon("-ip", "192.0.2.1", "-envFile", "/tmp/service.env", "--env-file-interval", "0.5")
    web = run_container(ports={"80/tcp": None})
    wait_until(lambda: len(consul_api.services_of(hostname)) == 1, message="registered")
    write(web, "SERVICE_NAME=from-file\\n")
    wait_until(lambda: consul_api.services_of(hostname)[f"{hostname}:{web.name}:80"]["Service"] == "from-file",
               message="name from the env file")


def test_a_bad_line_holding_a_secret_never_reaches_the_log(start_daemon, run_container, consul_api, hostname):
    """The env file may hold the application's secrets; dockerd reads it as root. A line the
    daemon cannot use is named by its number, never shown; a file of them costs a few lines."""
    daemon = start_daemon("-envFile", "/tmp/service.env", "--env-file-interval", "0.5")
    web = run_container(ports={"80/tcp": None})
    wait_until(lambda: len(consul_api.services_of(hostname)) == 1, message="registered")
    secrets = ("hunter2-db-token", "s3cr3t-api-key", "pa55word")
    write(web, "SERVICE_NAME=from-file\\n" + "".join(f"{secrets[0]}-{n}\\n" for n in range(200)) +
          f"={secrets[1]}\\nMY PASSWORD={secrets[2]}\\n")
    daemon.wait_log("service.env: line 2: not KEY=value")
    assert not [secret for secret in secrets if secret in daemon.log()]
    daemon.wait_log("service.env: and 199 more line(s) not KEY=value")
    log = daemon.log()
    assert not [secret for secret in secrets if secret in log] and "line 2: not KEY=value (no '=')" in log
    assert len([line for line in log.splitlines() if "service.env: " in line]) <= 4
    service = next(iter(consul_api.services_of(hostname).values()))
    assert service["Service"] != "from-file"  # a malformed content is not used: the last good values stay
