"""``hpsearch dashboard``: Optuna's own dashboard, a real process, over the API's database."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.service.conftest import free_port, service_env, wait_for
from tests.service.test_protocol import FakeWorker, create


def test_optuna_dashboard_shows_the_service_s_studies_and_trials(api, tmp_path) -> None:
    s = create(api, "seen-by-optuna-dashboard", n_trials=3)
    worker = FakeWorker(api.url, "optuna-dashboard-worker")
    for value in (0.5, 0.7):
        trial = worker.ask()
        assert trial is not None
        worker.report(trial, 1, value)
        worker.tell(trial, value=value)

    port = free_port()
    log = (tmp_path / "optuna-dashboard.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "dashboard", "--port", str(port)],
        env=service_env(api.database_url),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def studies() -> list[dict] | None:
            assert process.poll() is None, (tmp_path / "optuna-dashboard.log").read_text()
            try:
                return httpx.get(f"{url}/api/studies", timeout=10).json()["study_summaries"]
            except httpx.TransportError:
                return None

        summaries = wait_for(studies, 60, "optuna-dashboard answering")
        ours = [
            x for x in summaries if {"key": "hpsearch_study", "value": s["name"]} in x["user_attrs"]
        ]
        assert len(ours) == 1, summaries
        detail = httpx.get(f"{url}/api/studies/{ours[0]['study_id']}?after=0", timeout=10).json()
        values = sorted(t["values"][0] for t in detail["trials"] if t["state"] == "Complete")
        assert values == [0.5, 0.7]
        page = httpx.get(url, timeout=10, follow_redirects=True)
        assert page.status_code == 200 and "optuna" in page.text.lower()
    finally:
        process.terminate()
        process.wait(10)
        log.close()
