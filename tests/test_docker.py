"""docker/: the compose stack validates with Docker's own tool, holds every component of the production
setup, keeps its secrets out of the repository; the Dockerfile passes hadolint, and builds where a
Docker daemon is available."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import missing_service

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_FERNET_KEY",
           "S3_ACCESS_KEY", "S3_SECRET_KEY")


def _compose() -> list[str]:
    """`docker compose` (v2) where the plugin is installed, else Debian's docker-compose; neither: skip (fail in CI)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    missing_service("needs docker compose or Debian's docker-compose (`bash scripts/services.sh` installs it)")


def _env_file(tmp_path: Path, **missing: bool) -> Path:
    """docker/.env.example with its empty secrets filled in (except those named)."""
    text = (DOCKER / ".env.example").read_text()
    for name in SECRETS:
        if name not in missing:
            text = re.sub(rf"^{name}=$", f"{name}=test-{name.lower()}", text, flags=re.M)
    path = tmp_path / "env"
    path.write_text(text)
    return path


def _config(tmp_path, *profiles: str, **missing: bool) -> subprocess.CompletedProcess:
    args = [a for p in profiles for a in ("--profile", p)]
    return subprocess.run([*_compose(), "--env-file", str(_env_file(tmp_path, **missing)), "-f",
                           str(DOCKER / "compose.yaml"), *args, "config"], capture_output=True, text=True)


def test_compose_file_validates_with_every_component(tmp_path):
    done = _config(tmp_path, "gpu")
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"postgres", "redis", "minio", "airflow-init", "airflow-apiserver", "airflow-scheduler",
                             "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "airflow-worker-gpu",
                             "spark-master", "spark-worker"}
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:test-postgres_password@postgres/")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:test-redis_password@redis:6379/")
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"  # auth stays on
    assert '"host": "spark://spark-master"' in env["AIRFLOW_CONN_SPARK_DEFAULT"]
    assert '"endpoint_url": "http://minio:9000"' in env["AIRFLOW_CONN_AWS_DEFAULT"]
    assert env["DATACOMP_STORAGE_ROOT"].startswith("s3://")
    # the GPU worker: the gpu queue, the host's GPUs reserved, a CUDA build of torch
    gpu = services["airflow-worker-gpu"]
    assert gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX"]
    assert "default" in services["airflow-worker"]["command"][services["airflow-worker"]["command"].index("--queues") + 1]
    assert "spark://spark-master:7077" in " ".join(services["spark-worker"]["command"])
    # only started with the gpu profile (a host without GPUs runs the rest)
    assert gpu["profiles"] == ["gpu"]


def test_compose_refuses_to_start_without_its_secrets(tmp_path):
    done = _config(tmp_path, POSTGRES_PASSWORD=True)
    assert done.returncode != 0 and "set POSTGRES_PASSWORD in docker/.env" in done.stderr


def test_no_secret_is_committed():
    """Every secret in compose.yaml is a ${VARIABLE}; .env.example leaves them empty; docker/.env is ignored."""
    compose = (DOCKER / "compose.yaml").read_text()
    for key in ("PASSWORD", "SECRET", "FERNET_KEY"):
        for line in compose.splitlines():
            if re.search(rf"{key}\w*:\s*\S", line) and "PASSWORDS_FILE" not in line:
                assert "${" in line, line
    example = (DOCKER / ".env.example").read_text()
    for name in SECRETS:
        assert re.search(rf"^{name}=$", example, flags=re.M), name
    ignored = subprocess.run(["git", "check-ignore", "docker/.env"], cwd=REPO, capture_output=True)
    assert ignored.returncode == 0


def test_dockerfile_passes_hadolint_and_matches_the_pinned_airflow():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKER / "Dockerfile")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements" / "constraints.txt").read_text(), re.M)[1]
    assert f"apache/airflow:{pinned}-python3.11" in (DOCKER / "Dockerfile").read_text()
    for line in (DOCKER / "Dockerfile").read_text().splitlines():  # everything it copies exists
        if line.startswith("COPY"):
            source = line.split()[-2]
            assert (REPO / source).exists(), source


def test_image_builds_where_docker_runs():
    if not shutil.which("docker") or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker daemon here: the image is linted (hadolint), not built")
    done = subprocess.run(["docker", "build", "-f", str(DOCKER / "Dockerfile"), "-t", "datacomp-platform:test",
                           str(REPO)], capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
