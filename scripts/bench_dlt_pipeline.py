"""The dlt side of the benchmark: dlt's REST API source exporting sequenceSteps to Parquet files.

Run by scripts/bench.py with the python of a throwaway virtualenv that holds `dlt[parquet]`
(dlt is never a dependency of this project), in its own process so that its wall time, CPU
seconds and peak memory are measured like the export's:

    VENV/bin/python scripts/bench_dlt_pipeline.py API_URL TOKEN PAGE_SIZE WORK_DIR

dlt's defaults throughout (extract, normalize, load, nesting, file rotation), with what any user
of the source must configure: the base URL, the bearer token, the paginator that follows the
absolute `links.next` of a JSON:API page, the `data` selector, and the page size (`0`: none is
sent and the API's default applies). The filesystem destination writes Parquet under
WORK_DIR/files; dlt's own state goes under WORK_DIR/pipelines (not the user's ~/.dlt).
Prints one JSON line: the parquet directory of the steps table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DATASET = "outreach"
TABLE = "sequence_steps"  # dlt's snake_case of the resource `sequenceSteps`


def source_config(api_url: str, token: str, page_size: int) -> dict[str, Any]:
    """The `RESTAPIConfig` of the steps collection, as a plain dict."""
    endpoint: dict[str, Any] = {"path": "sequenceSteps", "data_selector": "data"}
    if page_size:
        endpoint["params"] = {"page[size]": page_size}
    return {
        "client": {
            "base_url": api_url.rstrip("/") + "/",
            "auth": {"type": "bearer", "token": token},
            "paginator": {"type": "json_link", "next_url_path": "links.next"},
        },
        "resources": [{"name": "sequenceSteps", "endpoint": endpoint}],
    }


def main() -> None:
    import dlt
    from dlt.sources.rest_api import rest_api_source

    api_url, token, page_size, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    pipeline = dlt.pipeline(
        pipeline_name="bench_outreach",
        pipelines_dir=str(work / "pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=(work / "files").as_uri()),
        dataset_name=DATASET,
    )
    config: Any = source_config(api_url, token, page_size)  # a RESTAPIConfig, as a plain dict
    pipeline.run(rest_api_source(config), loader_file_format="parquet")
    print(json.dumps({"parquet_dir": str(work / "files" / DATASET / TABLE)}))


if __name__ == "__main__":
    main()
