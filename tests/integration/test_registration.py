"""registrator's documented examples and lifecycle, against real Docker and Consul."""

from __future__ import annotations

import pytest

from tests.integration.conftest import host_port, status_args, wait_until

pytestmark = pytest.mark.integration

HOST_IP = "192.0.2.10"  # -ip: a documentation address, only ever written into Consul


def marker(hostname: str, container) -> dict[str, str]:
    return {"external-source": "consul-reg", "consul_reg_host": hostname, "consul_reg_container": container.id}


def user_meta(service: dict) -> dict[str, str]:
    return {k: v for k, v in service["Meta"].items() if not k.startswith("consul_reg_") and k != "external-source"}


def wait_services(consul_api, hostname, count, timeout=20.0):
    return wait_until(lambda: (s := consul_api.services_of(hostname)) and len(s) == count and s,
                      timeout, message=f"{count} services of {hostname}")


def test_single_port_default(start_daemon, run_container, consul_api, hostname):
    start_daemon("-ip", HOST_IP)
    web = run_container("httpd -f -p 80 -h /www", ports={"80/tcp": None})
    services = wait_services(consul_api, hostname, 1)
    service = services[f"{hostname}:{web.name}:80"]
    assert service["Service"] == "busybox"
    assert service["Port"] == host_port(web, "80/tcp")
    assert service["Address"] == HOST_IP
    assert service["Tags"] == []
    assert user_meta(service) == {}
    assert marker(hostname, web).items() <= service["Meta"].items()


def test_name_tags_and_meta_from_env(start_daemon, run_container, consul_api, hostname):
    start_daemon("-ip", HOST_IP)
    redis = run_container(ports={"6379/tcp": None},
                          environment={"SERVICE_NAME": "db", "SERVICE_TAGS": "master,backups", "SERVICE_REGION": "us2"})
    services = wait_services(consul_api, hostname, 1)
    service = services[f"{hostname}:{redis.name}:6379"]
    assert (service["Service"], service["Tags"], user_meta(service)) == ("db", ["master", "backups"], {"region": "us2"})
    assert service["Port"] == host_port(redis, "6379/tcp")


def test_two_ports_default(start_daemon, run_container, consul_api, hostname):
    start_daemon("-ip", HOST_IP)
    web = run_container(ports={"80/tcp": None, "443/tcp": None})
    services = wait_services(consul_api, hostname, 2)
    http, https = services[f"{hostname}:{web.name}:80"], services[f"{hostname}:{web.name}:443"]
    assert (http["Service"], http["Port"]) == ("busybox-80", host_port(web, "80/tcp"))
    assert (https["Service"], https["Port"]) == ("busybox-443", host_port(web, "443/tcp"))


@pytest.mark.parametrize("via", ["environment", "labels"])
def test_two_ports_with_port_keys(start_daemon, run_container, consul_api, hostname, via):
    start_daemon("-ip", HOST_IP)
    keys = {"SERVICE_443_NAME": "https", "SERVICE_443_ID": f"https.{hostname}", "SERVICE_443_SNI": "enabled",
            "SERVICE_80_NAME": "http", "SERVICE_TAGS": "www"}
    nginx = run_container(ports={"80/tcp": None, "443/tcp": None}, **{via: keys})
    services = wait_services(consul_api, hostname, 2)
    https, http = services[f"https.{hostname}"], services[f"{hostname}:{nginx.name}:80"]
    assert (https["Service"], https["Port"], https["Tags"]) == ("https", host_port(nginx, "443/tcp"), ["www"])
    assert user_meta(https) == {"sni": "enabled"}
    assert (http["Service"], http["Port"], http["Tags"]) == ("http", host_port(nginx, "80/tcp"), ["www"])
    assert user_meta(http) == {}


def test_label_wins_over_env_and_escaped_comma(start_daemon, run_container, consul_api, hostname):
    start_daemon("-ip", HOST_IP, "-tags", "forced")
    rule = r"traefik.http.routers.web.rule=Host(`a.example.com`\,`b.example.com`)"
    run_container(ports={"80/tcp": None}, environment={"SERVICE_NAME": "from-env"},
                  labels={"SERVICE_NAME": "from-label", "SERVICE_TAGS": f"{rule},x,x"})
    service = next(iter(wait_services(consul_api, hostname, 1).values()))
    assert service["Service"] == "from-label"
    assert service["Tags"] == ["traefik.http.routers.web.rule=Host(`a.example.com`,`b.example.com`)", "x", "forced"]


def test_stop_deregisters(start_daemon, run_container, consul_api, hostname):
    start_daemon("-ip", HOST_IP)
    web = run_container(ports={"80/tcp": None})
    wait_services(consul_api, hostname, 1)
    web.stop(timeout=1)
    wait_until(lambda: consul_api.services_of(hostname) == {}, message="service removed after stop")


def test_deregister_on_success_keeps_failed_container(start_daemon, run_container, consul_api, hostname):
    daemon = start_daemon("-ip", HOST_IP, "-deregister", "on-success", *status_args(),
                          resync="2")  # resyncs keep the record
    failing = run_container(["sh", "-c", "sleep 2; exit 3"], ports={"80/tcp": None})
    run_container(["sh", "-c", "sleep 2; exit 0"], ports={"81/tcp": None})  # exit 0: deregistered
    wait_services(consul_api, hostname, 2)
    wait_until(lambda: set(consul_api.services_of(hostname)) == {f"{hostname}:{failing.name}:80"}, timeout=30,
               message="only the failed container's record left")
    failing.reload()
    assert failing.attrs["State"]["ExitCode"] == 3
    # Later resyncs (-resync 2) must not remove what on-success kept on purpose.
    daemon.wait_full_passes_after(count=2)  # two more resyncs
    assert set(consul_api.services_of(hostname)) == {f"{hostname}:{failing.name}:80"}
    failing.remove()
    wait_until(lambda: consul_api.services_of(hostname) == {}, message="record removed with its container")


def test_internal_registers_container_ip_and_exposed_port(start_daemon, run_container, consul_api, hostname):
    start_daemon("-internal")
    worker = run_container(ports={"8080/tcp": None})
    service = next(iter(wait_services(consul_api, hostname, 1).values()))
    worker.reload()
    assert service["Address"] == worker.attrs["NetworkSettings"]["IPAddress"]
    assert service["Port"] == 8080


def test_specific_host_address_is_kept(start_daemon, run_container, consul_api, hostname):
    start_daemon()
    run_container(ports={"80/tcp": ("127.0.0.1", None)})
    service = next(iter(wait_services(consul_api, hostname, 1).values()))
    assert service["Address"] == "127.0.0.1"


def test_start_removes_orphans_and_leaves_foreign_services(start_daemon, run_container, consul_api, hostname):
    web = run_container(ports={"80/tcp": None})
    orphan_meta = {"external-source": "consul-reg", "consul_reg_host": hostname, "consul_reg_container": "gone"}
    consul_api.register({"ID": f"{hostname}:vanished:80", "Name": "vanished", "Port": 1, "Meta": orphan_meta})
    consul_api.register({"ID": f"{hostname}:foreign", "Name": "foreign", "Port": 2})
    other_host_meta = {**orphan_meta, "consul_reg_host": hostname + "-other"}
    consul_api.register({"ID": f"{hostname}-other:x:80", "Name": "other-host", "Port": 3, "Meta": other_host_meta})
    try:
        daemon = start_daemon("-ip", HOST_IP)
        wait_until(lambda: set(consul_api.services_of(hostname)) == {f"{hostname}:{web.name}:80"},
                   message="orphan removed, container registered")
        daemon.wait_log(f"deregistered {hostname}:vanished:80")
        all_ids = set(consul_api.services())
        assert f"{hostname}:foreign" in all_ids
        assert f"{hostname}-other:x:80" in all_ids
    finally:
        consul_api.deregister(f"{hostname}-other:x:80")


def test_cleanup_adopts_and_removes_registrator_leftovers(start_daemon, run_container, consul_api, hostname):
    web = run_container(ports={"80/tcp": None})
    adopted_id, dead_id = f"{hostname}:{web.name}:80", f"{hostname}:long-gone:80"
    consul_api.register({"ID": adopted_id, "Name": "busybox", "Port": host_port(web, "80/tcp")})
    consul_api.register({"ID": dead_id, "Name": "busybox", "Port": 9})
    consul_api.register({"ID": f"{hostname}-not-registrator", "Name": "foreign", "Port": 9})
    start_daemon("-ip", HOST_IP, "-cleanup")
    wait_until(lambda: dead_id not in consul_api.services(), message="leftover removed")
    adopted = wait_until(lambda: consul_api.services_of(hostname).get(adopted_id), message="leftover adopted")
    assert adopted["Meta"]["external-source"] == "consul-reg"
    assert f"{hostname}-not-registrator" in consul_api.services()


def test_daemon_restart_leaves_no_duplicates(start_daemon, run_container, consul_api, hostname):
    daemon = start_daemon("-ip", HOST_IP)
    run_container(ports={"80/tcp": None, "443/tcp": None})
    first = wait_services(consul_api, hostname, 2)
    assert daemon.stop() == 0
    assert consul_api.services_of(hostname) == first  # a daemon restart is not an outage
    wait_until(lambda: consul_api.in_catalog(first), message="the first daemon's records synced to the catalog")
    index = consul_api.catalog_index()
    second = start_daemon("-ip", HOST_IP, *status_args())
    second.wait_first_full_pass()
    assert consul_api.services_of(hostname) == first
    assert consul_api.catalog_index() == index  # nothing rewritten: the digests matched
    assert " registered " not in second.log()  # no register call at all


def test_rename_moves_service_ids(start_daemon, run_container, consul_api, hostname):
    start_daemon("-ip", HOST_IP)
    web = run_container(ports={"80/tcp": None})
    wait_services(consul_api, hostname, 1)
    web.rename(web.name + "-renamed")
    wait_until(lambda: set(consul_api.services_of(hostname)) == {f"{hostname}:{web.name}-renamed:80"},
               message="ID follows the new name")


def test_bad_labels_are_survived(start_daemon, run_container, consul_api, hostname):
    daemon = start_daemon("-ip", HOST_IP)
    labels = {
        "SERVICE_NAME": "",
        "SERVICE_9999_NAME": "not-published",
        "SERVICE_HTTP_NAME": "typo",
        "SERVICE_ÜNICODE": "ü",
        "SERVICE_LONG": "x" * 100_000,
        "SERVICE_consul-reserved": "x",
        "SERVICE_GOOD": "kept",
    }
    bad = run_container(ports={"80/tcp": None}, labels=labels)
    good = run_container(ports={"81/tcp": None}, environment={"SERVICE_NAME": "fine"})
    services = wait_services(consul_api, hostname, 2)
    bad_service = services[f"{hostname}:{bad.name}:80"]
    assert bad_service["Service"] == "busybox"  # the empty SERVICE_NAME was ignored
    assert user_meta(bad_service) == {"good": "kept", "http_name": "typo", "_nicode": "ü"}
    assert services[f"{hostname}:{good.name}:81"]["Service"] == "fine"
    log = daemon.log()
    for key in ("SERVICE_NAME", "SERVICE_9999_NAME", "SERVICE_HTTP_NAME", "SERVICE_ÜNICODE", "SERVICE_LONG",
                "SERVICE_consul-reserved"):
        assert f"container {bad.name}: key '{key}'" in log, key
