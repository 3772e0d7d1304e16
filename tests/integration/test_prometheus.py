"""A real Prometheus (Debian bullseye's 2.24.1, built with Consul service
discovery) finds containers through Consul tags and scrapes them."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.integration.conftest import free_port, wait_until

pytestmark = pytest.mark.integration

METRICS = "printf 'demo_up 1\\n' > /www/metrics && exec httpd -f -p {port} -h /www"


@pytest.fixture
def prometheus(tmp_path, hostname):
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: consul
    scrape_interval: 1s
    consul_sd_configs:
      - server: 127.0.0.1:8500
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__meta_consul_tags]
        regex: .*,prometheus,.*
        action: keep
      - source_labels: [__meta_consul_service_metadata_consul_reg_host]
        regex: {hostname}
        action: keep
      - source_labels: [__meta_consul_service]
        target_label: service
""")
    process = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=open(tmp_path / "prometheus.log", "wb"), stderr=subprocess.STDOUT)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
    wait_until(lambda: api.get("/-/ready").status_code == 200, timeout=60, message="prometheus ready")
    yield api
    process.kill()
    process.wait()


def targets(api) -> dict[str, str]:
    """service label -> health of every active target."""
    active = api.get("/api/v1/targets").json()["data"]["activeTargets"]
    return {t["labels"].get("service", ""): t["health"] for t in active}


def test_prometheus_scrapes_tagged_containers(prometheus, start_daemon, run_container, hostname):
    start_daemon()
    web = run_container(["sh", "-c", METRICS.format(port=80)], ports={"80/tcp": None},
                        labels={"SERVICE_NAME": "web", "SERVICE_TAGS": "prometheus,traefik.enable=true"})
    # A delayed-job worker that publishes only its /metrics port.
    run_container(["sh", "-c", METRICS.format(port=9100)], ports={"9100/tcp": None},
                  labels={"SERVICE_NAME": "jobs", "SERVICE_TAGS": "prometheus"})
    run_container(ports={"81/tcp": None}, labels={"SERVICE_NAME": "untagged"})
    wait_until(lambda: targets(prometheus) == {"web": "up", "jobs": "up"}, timeout=60,
               message="both tagged containers are up targets")
    web.stop(timeout=1)
    wait_until(lambda: targets(prometheus) == {"jobs": "up"}, timeout=60, message="stopped container dropped")
