"""deploy/compose.yaml, validated (no compose engine runs here): against the Compose
specification's JSON schema (check-jsonschema's vendored copy, no network), by
podman-compose's own reading of it, and against the image it runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_FILE = DEPLOY / "asyncinvoke.container.env"
ENTRYPOINT = DEPLOY / "container" / "entrypoint.sh"


def _schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(path)],
        capture_output=True, text=True, timeout=60,
    )


def test_compose_yaml_matches_the_compose_specification(tmp_path: Path) -> None:
    checked = _schema_check(COMPOSE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The check can fail: a misspelt key is refused.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace('command: ["worker"]', 'comand: ["worker"]'))
    assert broken.read_text() != COMPOSE.read_text()
    refused = _schema_check(broken)
    assert refused.returncode != 0
    assert "comand" in refused.stdout + refused.stderr


def test_podman_compose_reads_it_and_it_runs_the_images_roles_with_its_files() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "podman_compose", "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, timeout=60, cwd=DEPLOY,
    )
    assert shown.returncode == 0, shown.stderr
    config = yaml.safe_load(shown.stdout)
    services = config["services"]
    entrypoint = ENTRYPOINT.read_text()
    for name, role in (("worker", "worker"), ("gateway", "gateway")):
        service = services[name]
        assert service["command"] == [role]
        assert re.search(rf"^\s+{role}\b.*\)", entrypoint, re.M), f"no role {role}"
        assert service["read_only"] is True
        assert service["image"] == "asyncinvoke:latest"
        # The stop timeout is above the shutdown grace the containers are given.
        grace = re.search(r"^ASYNCINVOKE_SHUTDOWN_GRACE=(\d+)$", ENV_FILE.read_text(), re.M)
        assert grace is not None
        assert int(service["stop_grace_period"].rstrip("s")) > int(grace.group(1))
    for secret in config["secrets"].values():
        assert (DEPLOY / secret["file"]).is_file(), secret
    assert (DEPLOY / "../rabbitmq/rabbitmq.conf").is_file()


def test_every_variable_of_the_env_file_is_read_by_the_service_or_the_entrypoint() -> None:
    sources = entrypoint = ENTRYPOINT.read_text()
    sources += "".join(p.read_text() for p in (ROOT / "service").rglob("*.py"))
    names = re.findall(r"^(ASYNCINVOKE_\w+)=", ENV_FILE.read_text(), re.M)
    assert names
    for name in names:
        assert name in sources, f"{name} is set in {ENV_FILE.name} but nothing reads it"
    assert "ASYNCINVOKE_AMQP_URL_FILE" in entrypoint
