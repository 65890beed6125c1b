"""Airflow's hostname callable for the production-setup test: two Celery workers on one machine
record distinct hostnames on the task instances they run (DATACOMP_TEST_WORKER), so the test can
tell which worker ran a try."""

import os
import socket


def hostname() -> str:
    return os.environ.get("DATACOMP_TEST_WORKER") or socket.getfqdn()
