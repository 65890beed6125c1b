"""Shared fixtures: a synthetic crawl served from loopback, a local Spark session."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.pop("DATACOMP_STORAGE_ROOT", None)
# Tests never touch the checkout's Airflow home (var/airflow) or ~/airflow.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="datacomp-tests-airflow-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[1] / "dags")
REPO = Path(__file__).resolve().parents[1]
# the config of every test that loads one: the defaults, but downloads may reach the loopback image server
LOOPBACK_CONFIG = str(REPO / "tests" / "data" / "loopback-crawl.yaml")
os.environ["DATACOMP_CONFIG"] = LOOPBACK_CONFIG



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_service(message: str) -> None:
    """A system service a test needs is not there (scripts/services.sh provides them): skip, or fail in CI
    (.ci/run sets DATACOMP_REQUIRE_SERVICES=1), saying what is missing."""
    if os.environ.get("DATACOMP_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


# S3 is a moto server on loopback (fixture `s3_bucket`). Its address is set
# before anything starts, so that Spark's worker processes inherit it too.
S3_PORT = _free_port()
os.environ.update({
    "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
})

# py4j logs at interpreter exit, after pytest has closed its capture streams
logging.getLogger("py4j").setLevel(logging.WARNING)

# Short client timeout and server hang keep the timeout case quick.
DOWNLOAD_TIMEOUT = 5
HANG_SECONDS = 10


@pytest.fixture(scope="session")
def image_server():
    from datacomp_ops.synthetic.server import serving

    with serving(hang_seconds=HANG_SECONDS, slow_seconds=0.2) as server:
        yield server


@pytest.fixture(scope="session")
def small_crawl(tmp_path_factory, image_server):
    """300 URLs in 2 WAT files with every failure case, served by `image_server`, and its eval suite."""
    from datacomp_ops.synthetic.crawl import CrawlSpec, generate_crawl
    from datacomp_ops.synthetic.evalsuite import generate_eval_suite

    out = tmp_path_factory.mktemp("crawl")
    summary = generate_crawl(out, CrawlSpec(n_urls=300, seed=7, base_url=image_server.base_url, urls_per_file=200))
    generate_eval_suite(out / "eval")
    summary["dir"] = str(out)
    summary["eval_dir"] = str(out / "eval")
    return summary


@pytest.fixture(scope="session")
def eval_suite(tmp_path_factory):
    from datacomp_ops.synthetic.evalsuite import generate_eval_suite

    out = tmp_path_factory.mktemp("eval")
    generate_eval_suite(out)
    return str(out)


@pytest.fixture(scope="session")
def embedded_models():
    """The embedded CLIP stand-ins, trained once per machine and recipe, where the demo keeps them."""
    from datacomp_ops.core.config import PlatformConfig
    from datacomp_ops.embedded.clip_models import ensure_trained, stand_ins_dir

    config = PlatformConfig()
    ensure_trained(stand_ins_dir(config), config.metadata.embedded_clip_steps)
    return stand_ins_dir(config)


@pytest.fixture(scope="session")
def spark():
    from datacomp_ops.crawl.extract import local_spark

    session = local_spark("local[2]", "datacomp-tests")
    yield session
    session.stop()


FAST_DOWNLOAD = {
    "download.timeout": DOWNLOAD_TIMEOUT,
    "download.retries": 0,  # DataComp's 2 would wait out the hanging URLs three times
    "download.processes_count": 1,
    "download.thread_count": 16,
    "download.number_sample_per_shard": 100,
    "extract.urls_per_partition": 150,
    "extract.spark_master": "local[2]",
}


@pytest.fixture
def fast_download_config(tmp_path):
    from datacomp_ops.core.config import load_config

    return load_config(overrides={"storage_root": str(tmp_path / "root"), **FAST_DOWNLOAD})


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on loopback; fsspec's s3fs (and Spark's workers) talk to it like to AWS."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket per test, as ``s3://name``."""
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-")[:50]
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


# The longest modules first, so that with pytest-xdist (`-n 2 --dist loadfile`, the Makefile's test command)
# the browser test's quarter hour of waiting on the scheduler overlaps the rest instead of ending the run alone.
LONGEST_FIRST = ["test_ui_forms.py", "test_production.py", "test_rebuilds.py", "test_s3_build.py", "test_dags.py", "test_train_eval_dags.py",
                 "test_download.py", "test_training.py", "test_cli.py", "test_byod.py", "test_evaluation.py",
                 "test_filtering.py", "test_metadata.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order
