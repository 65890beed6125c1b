"""The platform's page in the Airflow UI: pool versions, a ledger lookup and the leaderboard.

A FastAPI app served by Airflow's api-server under /datacomp, shown inside the UI (an external view in
the navigation). Every request needs the Airflow login (the JWT of the `_token` cookie or a Bearer
header), as the UI's own pages do; the page itself is rendered by datacomp_ops.ui.platform_page.
"""

from __future__ import annotations

import storage_credentials
from airflow.api_fastapi.core_api.security import get_user
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, Query
from fastapi.responses import HTMLResponse

app = FastAPI(title="DataComp platform", docs_url=None, redoc_url=None)


@app.get("/", response_class=HTMLResponse)
def platform_page(q: str = Query("", max_length=4096), user=Depends(get_user)) -> str:
    from datacomp_ops.core.config import load_config
    from datacomp_ops.ui.platform_page import render

    storage_credentials.export_storage_credentials()  # a storage root on S3: the api-server reads it too
    return render(load_config().storage_root, q)


class DataCompPlugin(AirflowPlugin):
    name = "datacomp"
    fastapi_apps = [{"app": app, "url_prefix": "/datacomp", "name": "DataComp platform"}]
    listeners = [storage_credentials]  # the aws_default connection as every task's AWS environment
    external_views = [{"name": "DataComp", "href": "datacomp/", "destination": "nav", "url_route": "datacomp",
                       "category": "browse"}]
