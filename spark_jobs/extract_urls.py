"""Spark entry point of URL extraction: parse arguments, get the session, call the library.

    spark-submit spark_jobs/extract_urls.py --crawl-id ID --storage-root ROOT \
        --input s3://.../wat.paths.gz [--input more.wat.gz] [--report URL] [--config-json '{...}']
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from pyspark.sql import SparkSession

from datacomp_ops.core.config import config_from_dict, load_config
from datacomp_ops.core.layout import CrawlLayout
from datacomp_ops.crawl.extract import run_extract_urls

STORAGE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
               "AWS_DEFAULT_REGION")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", action="append", default=[], help="WAT file or wat.paths(.gz) listing")
    parser.add_argument("--inputs-json", help="the same as a JSON list (how the DAG passes them)")
    parser.add_argument("--crawl-id", required=True)
    parser.add_argument("--storage-root")
    parser.add_argument("--report", help="where to write the batch report (JSON)")
    parser.add_argument("--config-json", help="the full platform config, as PlatformConfig.to_dict()")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    inputs = args.input + (json.loads(args.inputs_json) if args.inputs_json else [])
    if not inputs:
        parser.error("give at least one --input or --inputs-json")
    config = config_from_dict(json.loads(args.config_json)) if args.config_json else load_config()
    root = args.storage_root or config.storage_root
    builder = SparkSession.builder.appName(f"extract_urls {args.crawl_id}")
    # executors on a cluster read the WAT files and write the URL parts themselves: they get the
    # driver's storage environment (the task's, from the aws_default connection or the worker's)
    for name in STORAGE_ENV:
        if os.environ.get(name):
            builder = builder.config(f"spark.executorEnv.{name}", os.environ[name])
    spark = builder.getOrCreate()
    try:
        stats = run_extract_urls(inputs, CrawlLayout(root, args.crawl_id), config, args.report, spark)
    finally:
        spark.stop()
    print(json.dumps(stats.to_dict()["counters"]))


if __name__ == "__main__":
    main()
