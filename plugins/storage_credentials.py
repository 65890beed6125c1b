"""The `aws_default` connection as the storage credentials of every task (and of the platform page).

datacomp_ops reaches S3 through fsspec/s3fs and boto3, which read the standard AWS environment.
Where an `aws_default` connection (or the one DATACOMP_AWS_CONN_ID names) is defined, its
credentials (roles and profiles resolved by the Amazon provider's hook), endpoint and region become
that environment in the task's process just before the task runs, and so in everything it starts
(spark-submit, img2dataset, the trainer). Where none is, the environment is used as it is
(instance roles, AWS_* variables). The secrets stay in the connection, never in a file.
"""

from __future__ import annotations

import logging
import os

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)


def conn_id() -> str:
    return os.environ.get("DATACOMP_AWS_CONN_ID", "aws_default")


def aws_environment(aws_conn_id: str) -> dict[str, str]:
    """AWS_* variables from the connection; {} when it is not defined."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(aws_conn_id)
    except Exception:  # noqa: BLE001 - AirflowNotFoundException, under any of its import paths
        return {}
    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="s3")
    credentials = hook.get_credentials()
    env = {"AWS_ACCESS_KEY_ID": credentials.access_key, "AWS_SECRET_ACCESS_KEY": credentials.secret_key,
           "AWS_SESSION_TOKEN": credentials.token, "AWS_ENDPOINT_URL": hook.conn_config.endpoint_url,
           "AWS_DEFAULT_REGION": hook.conn_config.region_name}
    return {k: v for k, v in env.items() if v}


def export_storage_credentials() -> None:
    env = aws_environment(conn_id())
    if env:
        os.environ.update(env)
        log.info("storage credentials from connection %s (%s)", conn_id(),
                 ", ".join(k for k in sorted(env) if k in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")) or "AWS")


@hookimpl
def on_task_instance_running(previous_state, task_instance):
    export_storage_credentials()
