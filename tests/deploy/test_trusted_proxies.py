"""Trusted proxies and the metrics token in the deployment files (issue 9, items 8, 10).

What the settings do is tested on the real service (tests/security/test_ratelimit_identity.py,
tests/monitoring/test_e2e_metrics_token.py); these check that compose and k8s set them.
"""

from __future__ import annotations

import ipaddress
import re

import pytest

from app.settings import Settings
from tests.deploy.manifests import compose, k8s_documents

_DEFAULTED = re.compile(r"^\$\{(?P<name>[A-Z_]+):-(?P<default>[^}]*)\}$")


@pytest.mark.parametrize("service", ["api", "api-cpu"])
def test_compose_trusts_x_forwarded_for_only_from_its_own_network(service: str) -> None:
    value = compose()["services"][service]["environment"]["SLEEPWELL_FORWARDED_ALLOW_IPS"]
    match = _DEFAULTED.match(value)
    assert match and match["name"] == "SLEEPWELL_FORWARDED_ALLOW_IPS", "overridable from .env"
    (subnet,) = [entry["subnet"] for entry in
                 compose()["networks"]["default"]["ipam"]["config"]]
    assert Settings(forwarded_allow_ips=match["default"]).forwarded_allow_ips == subnet
    network = ipaddress.ip_network(subnet)
    assert network.is_private and network.num_addresses <= 256, "only the project's network"


def test_k8s_trusts_the_pod_network_and_names_a_valid_range() -> None:
    data = k8s_documents()["ConfigMap"]["data"]
    trusted = Settings(forwarded_allow_ips=data["SLEEPWELL_FORWARDED_ALLOW_IPS"])
    networks = [ipaddress.ip_network(entry) for entry in trusted.forwarded_allow_ips.split(",")]
    assert networks and all(network.is_private for network in networks)
    assert "*" not in trusted.forwarded_allow_ips


def test_k8s_servicemonitor_sends_the_metrics_token_of_the_pods_secret() -> None:
    docs = k8s_documents()
    (endpoint,) = docs["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "sleepwell-secrets", "key": "SLEEPWELL_METRICS_TOKEN"},
    }
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    secrets = {source["secretRef"]["name"] for source in container["envFrom"]
               if "secretRef" in source}
    assert "sleepwell-secrets" in secrets, "the pods read the same token from the same Secret"
