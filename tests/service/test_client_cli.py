"""``hpsearch study`` and ``dataset`` as a user runs them: one clear line and a documented exit
code for every failure (no server, a refused token, 404, 422, 409, 5xx), a traceback only with
--debug; ``study trials|best|delete`` on real studies; the ETA of ``--wait``; tables that never
cut a name on an 80-column terminal."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from benchmarks.dashboard_load import seed
from hpsearch.params import validate_params
from tests.service.test_datasets import good_npz
from tests.service.test_protocol import FakeWorker, plausible_accuracy, run_study
from tests.support import (
    Api,
    DatabaseProxy,
    free_port,
    hpsearch_cli,
    make_database,
    service_env,
    spec,
    start_secured_api,
    wait_for,
    wait_until_done,
)

# The study and dataset commands' exit codes, as `hpsearch study --help` documents them.
INVALID, UNREACHABLE, TOKEN_REFUSED, NOT_FOUND, CONFLICT = 2, 3, 4, 5, 6
NO_SERVER = "start it with `hpsearch serve`, or pass --api / set HPSEARCH_API_URL"
TOKEN_HINT = "set HPSEARCH_TOKEN to a user token (`hpsearch token create NAME` where the API runs)"
# Only the API of this module, on SQLite: the commands are the same on every backend.
on_sqlite = pytest.mark.parametrize("api", ["sqlite"], indirect=True)


def hpsearch(
    *args: str, token: str | None = None, stdin: str = "", columns: int = 200, **env: str
) -> subprocess.CompletedProcess[str]:
    """The real ``hpsearch ARGS`` in a terminal ``columns`` wide, HPSEARCH_TOKEN set to
    ``token`` (and nothing else of the caller's HPSEARCH_API_URL or token)."""
    environ = {
        k: v for k, v in os.environ.items() if k not in ("HPSEARCH_TOKEN", "HPSEARCH_API_URL")
    }
    environ.update(COLUMNS=str(columns), **env)
    if token is not None:
        environ["HPSEARCH_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "hpsearch", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=environ,
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The error a failed command printed, checked to be what a user should see: no traceback,
    nothing on stdout; its first line."""
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stdout == "", out.stdout
    assert out.stderr.startswith("error: "), out.stderr
    return out.stderr.splitlines()[0]


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a rich table as a reader pieces them together: each row's cells, a cell
    folded over several lines joined back. A row starts where its first column (an id, which
    never wraps) has text."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if cells[0]:
            rows.append(cells)
        else:
            rows[-1] = [a + b for a, b in zip(rows[-1], cells, strict=True)]
    return rows


def write_spec(tmp_path: Path, body: dict[str, Any]) -> Path:
    path = tmp_path / f"{body['name']}.json"
    path.write_text(json.dumps(body))
    return path


def finish_study(api: Api, name: str) -> dict[str, Any]:
    """A study of 4 trials of the default search space, run to the end through the worker
    protocol (these tests are about the commands, not the training)."""
    created = api.http.post("/api/v1/studies", json=spec(name))
    assert created.status_code == 201, created.text
    worker = FakeWorker(api.url, f"{name}-worker")
    while (trial := worker.ask()) is not None:
        value = 0.2 + 0.1 * trial["number"]
        for epoch in (1, 2):
            assert worker.report(trial, epoch, value).status_code == 200
        assert worker.tell(trial, value=value, epochs=2).status_code == 200
    study = wait_until_done(api, created.json()["id"], timeout=60)
    assert study["status"] == "completed", study
    return study


@pytest.fixture(scope="module")
def finished_study(api: Api) -> dict[str, Any]:
    """One finished study for the tests that only read it."""
    return finish_study(api, "finished")


# -- failures: one line, one exit code each ------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("study", "list"),
        ("study", "show", "1"),
        ("study", "trials", "1"),
        ("study", "best", "1"),
        ("study", "wait", "1"),
        ("study", "delete", "1", "--yes"),
        ("dataset", "list"),
        ("dataset", "show", "ds_0123456789abcdef"),
    ],
)
def test_a_server_that_is_not_running_gets_one_line_and_exit_3(command: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = hpsearch(*command, "--api", url)
    assert out.returncode == UNREACHABLE
    assert one_line_error(out) == (
        f"error: cannot reach the hpsearch API at {url} (connection refused): {NO_SERVER}"
    )
    assert len(out.stderr.splitlines()) == 1


def test_the_api_url_comes_from_hpsearch_api_url_and_goes_before_or_after_the_action() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for out in (
        hpsearch("study", "list", HPSEARCH_API_URL=url),
        hpsearch("study", "--api", url, "list"),
    ):
        assert out.returncode == UNREACHABLE
        assert f"cannot reach the hpsearch API at {url} (connection refused)" in one_line_error(out)


def test_an_unknown_host_gets_one_line_and_exit_3() -> None:
    url = "http://no-such-host.invalid:8000"
    out = hpsearch("study", "list", "--api", url)
    assert out.returncode == UNREACHABLE
    assert re.fullmatch(
        rf"error: cannot reach the hpsearch API at {re.escape(url)} \(host name not found: .+\): "
        r"check the host in --api / HPSEARCH_API_URL",
        one_line_error(out),
    )


def test_a_server_that_never_answers_times_out_with_one_line_and_exit_3() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, says nothing
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        out = hpsearch("study", "show", "1", "--api", url, "--timeout", "1")
    assert out.returncode == UNREACHABLE
    assert one_line_error(out) == (
        f"error: cannot reach the hpsearch API at {url} (no answer within 1 s): check that it "
        "runs and answers there, or pass --timeout SECONDS"
    )


def test_an_api_url_that_is_not_a_url_is_invalid_input() -> None:
    out = hpsearch("study", "list", "--api", "localhost:8000")
    assert out.returncode == INVALID
    assert one_line_error(out) == (
        "error: --api: 'localhost:8000' is not an http:// URL: give one like "
        "http://127.0.0.1:8000 (--api or HPSEARCH_API_URL)"
    )


def test_debug_prints_the_traceback_then_the_same_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = f"error: cannot reach the hpsearch API at {url} (connection refused): {NO_SERVER}"
    for args in (("study", "--debug", "show", "1"), ("study", "show", "1", "--debug")):
        out = hpsearch(*args, "--api", url)
        assert out.returncode == UNREACHABLE
        assert out.stderr.startswith("Traceback (most recent call last):"), out.stderr
        assert "httpx.ConnectError: [Errno 111] Connection refused" in out.stderr
        assert out.stderr.splitlines()[-1] == line


def test_a_refused_token_gets_one_line_and_exit_4(tmp_path: Path) -> None:
    secured, drop = start_secured_api("sqlite", tmp_path)
    try:
        worker_token = secured.create_token("gpu-box", "worker")
        url = secured.url
        missing = hpsearch("study", "list", "--api", url)
        assert missing.returncode == TOKEN_REFUSED
        assert (
            one_line_error(missing) == f"error: the API at {url} needs a token (401): {TOKEN_HINT}"
        )

        unknown = hpsearch("dataset", "list", "--api", url, token="hpsu_" + "x" * 43)
        assert unknown.returncode == TOKEN_REFUSED
        assert one_line_error(unknown) == (
            f"error: the API at {url} refused the token (401: the token is unknown, revoked or "
            f"expired): {TOKEN_HINT}"
        )

        wrong_kind = hpsearch("study", "show", "1", "--api", url, token=worker_token)
        assert wrong_kind.returncode == TOKEN_REFUSED
        assert re.fullmatch(
            rf"error: the API at {re.escape(url)} refused the token \(403: this endpoint needs a "
            r"user token; 'gpu-box' \(tok_\w+\) is a worker token\): " + re.escape(TOKEN_HINT),
            one_line_error(wrong_kind),
        )

        assert hpsearch("study", "list", "--api", url, token=secured.token).returncode == 0
    finally:
        secured.stop()
        drop()


@on_sqlite
@pytest.mark.parametrize("action", ["show", "trials", "best", "stop", "resume", "wait", "delete"])
def test_an_unknown_study_is_one_not_found_line_and_exit_5(api: Api, action: str) -> None:
    out = hpsearch("study", action, "99999", "--api", api.url, *(["--yes"] * (action == "delete")))
    assert out.returncode == NOT_FOUND
    assert one_line_error(out) == f"error: study 99999 not found at {api.url}"


@on_sqlite
def test_an_unknown_dataset_is_one_not_found_line_and_exit_5(api: Api) -> None:
    for action in ("show", "delete"):
        out = hpsearch("dataset", action, "ds_0123456789abcdef", "--api", api.url)
        assert out.returncode == NOT_FOUND
        assert one_line_error(out) == f"error: dataset ds_0123456789abcdef not found at {api.url}"


@on_sqlite
def test_a_bad_spec_names_each_field_at_fault_and_exits_2(api: Api, tmp_path: Path) -> None:
    body = spec(
        "bad-spec",
        search_space={
            "dropout": {"type": "float", "low": 0.0, "high": 1.0},
            "learning_rate": {"type": "float", "low": -1.0, "high": 0.1, "log": True},
        },
    )
    path = write_spec(tmp_path, body)
    out = hpsearch("study", "create", str(path), "--api", api.url)
    assert out.returncode == INVALID
    assert one_line_error(out) == (
        f"error: the API at {api.url} refused the study spec in {path} (422): fix these and try "
        "again:"
    )
    # One indented line per field, as the API names them.
    errors = api.http.post("/api/v1/studies", json=body).json()["errors"]
    assert len(errors) >= 2
    assert out.stderr.splitlines()[1:] == [f"  {e['field']}: {e['reason']}" for e in errors]
    assert any(line.startswith("  search_space.dropout.high: ") for line in out.stderr.splitlines())


def test_a_spec_file_that_is_not_json_is_refused_before_any_request(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"name": ')
    # No API at all: the file is refused first.
    out = hpsearch("study", "create", str(path), "--api", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == INVALID
    assert one_line_error(out).startswith(f"error: cannot read {path}: Expecting value")


@on_sqlite
def test_a_taken_name_is_a_conflict_and_exits_6(api: Api, tmp_path: Path) -> None:
    path = write_spec(tmp_path, spec("taken-name", n_trials=1))
    first = hpsearch("study", "create", str(path), "--api", api.url)
    assert first.returncode == 0, first.stderr
    again = hpsearch("study", "create", str(path), "--api", api.url)
    assert again.returncode == CONFLICT
    assert re.fullmatch(
        rf"error: the API at {re.escape(api.url)} refused: .*taken-name.* \(409 conflict\)",
        one_line_error(again),
    )
    api.http.delete(f"/api/v1/studies/{first.stdout.split()[1]}")


def test_a_server_error_is_one_line_with_its_status_and_detail(tmp_path: Path) -> None:
    url, drop = make_database("postgresql", tmp_path)
    proxy = DatabaseProxy(("127.0.0.1", 5432))
    database_url = make_url(url).set(port=proxy.port).render_as_string(hide_password=False)
    port = free_port()
    env = service_env(database_url, HPSEARCH_DATA_DIR=str(tmp_path / "data"))
    server = Api(f"http://127.0.0.1:{port}", database_url, env, tmp_path / "api.log", port)
    server.start()
    try:
        proxy.cut(60)  # the database goes away: the API answers 503
        out = hpsearch("study", "list", "--api", server.url)
        assert out.returncode == 1
        assert re.fullmatch(
            rf"error: the API at {re.escape(server.url)} failed on GET /api/v1/studies \(503 "
            r"Service Unavailable\): the database is unavailable, retry shortly: .+",
            one_line_error(out),
        )
    finally:
        proxy.up()
        server.stop()
        proxy.stop()
        drop()


# -- study trials, best, delete ------------------------------------------------------------------


@on_sqlite
def test_study_trials_lists_the_trials_the_api_has(
    api: Api, finished_study: dict[str, Any]
) -> None:
    study_id, searched = finished_study["id"], finished_study["searched"]
    trials = api.http.get(f"/api/v1/studies/{study_id}/trials").json()["data"]
    assert len(trials) == 4

    out = hpsearch("study", "trials", str(study_id), "--api", api.url)
    assert out.returncode == 0, out.stderr
    header = next(line for line in out.stdout.splitlines() if line.startswith("┃"))
    assert [h.strip() for h in header.strip("┃").split("┃")] == [
        "#",
        "state",
        "val_accuracy",
        *searched,
        "epochs",
        "duration",
    ]
    assert searched == ["learning_rate", "dropout", "bn_momentum", "clip_mode", "clip_threshold"]
    assert table_rows(out.stdout) == [
        [
            str(t["number"]),
            t["state"],
            f"{t['value']:.4f}",
            *(
                f"{t['params'][p]:.4g}" if isinstance(t["params"][p], float) else t["params"][p]
                for p in searched
            ),
            str(t["epochs_run"]),
            f"{t['duration_seconds']:.1f} s",
        ]
        for t in trials
    ]
    assert f"study {study_id} ({finished_study['name']}): 4 trials of 4" in out.stdout

    as_json = hpsearch("study", "trials", str(study_id), "--json", "--api", api.url)
    assert json.loads(as_json.stdout) == trials

    complete = hpsearch("study", "trials", str(study_id), "--state", "complete", "--api", api.url)
    assert [r[0] for r in table_rows(complete.stdout)] == [
        str(t["number"]) for t in trials if t["state"] == "complete"
    ]
    pruned = hpsearch("study", "trials", str(study_id), "--state", "pruned", "--api", api.url)
    assert table_rows(pruned.stdout) == []
    assert f"study {study_id} ({finished_study['name']}): 0 pruned trials" in pruned.stdout


@on_sqlite
def test_study_best_shows_the_studys_best_trial(api: Api, finished_study: dict[str, Any]) -> None:
    study_id, best = finished_study["id"], finished_study["best_trial"]
    out = hpsearch("study", "best", str(study_id), "--api", api.url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == (
        f"study {study_id} ({finished_study['name']}): best trial {best['number']}, "
        f"val_accuracy {best['value']:.4f} (maximize)"
    )
    assert lines[1] == "searched:"
    lr = best["params"]["learning_rate"]
    assert lines[2] == f"  learning_rate: {lr:.4g}"
    assert "fixed:" in lines and "  hidden_units: [16]" in lines

    as_json = hpsearch("study", "best", str(study_id), "--json", "--api", api.url)
    params = json.loads(as_json.stdout)
    assert params == best["params"]
    assert params["learning_rate"] == lr  # every digit, not the table's 4
    validate_params(params)  # ready for `hpsearch trial --params @best.json`


@on_sqlite
def test_study_best_of_a_study_without_a_completed_trial_says_so(api: Api) -> None:
    created = api.http.post("/api/v1/studies", json=spec("not-started", n_trials=1)).json()
    out = hpsearch("study", "best", str(created["id"]), "--api", api.url)
    assert out.returncode == 1
    assert one_line_error(out) == (
        f"error: study {created['id']} (not-started) has no completed trial yet (queued, 0 of 1 "
        "finished)"
    )
    api.http.delete(f"/api/v1/studies/{created['id']}")


@on_sqlite
def test_study_delete_asks_first_then_the_study_is_gone(api: Api) -> None:
    finished = finish_study(api, "to-delete")
    study_id, name = finished["id"], finished["name"]
    prompt = f"delete study {study_id} ({name}, completed) and its 4 trials? [y/N] "

    kept = hpsearch("study", "delete", str(study_id), "--api", api.url, stdin="n\n")
    assert kept.returncode == 1
    assert kept.stderr == f"{prompt}\nstudy {study_id} not deleted\n"
    no_answer = hpsearch("study", "delete", str(study_id), "--api", api.url)
    assert no_answer.returncode == 1
    assert "not deleted (no answer: pass --yes to delete without asking)" in no_answer.stderr
    assert api.http.get(f"/api/v1/studies/{study_id}").status_code == 200

    deleted = hpsearch("study", "delete", str(study_id), "--api", api.url, stdin="y\n")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == f"study {study_id} ({name}) deleted\n"
    assert api.http.get(f"/api/v1/studies/{study_id}").status_code == 404
    gone = hpsearch("study", "show", str(study_id), "--api", api.url)
    assert gone.returncode == NOT_FOUND
    assert one_line_error(gone) == f"error: study {study_id} not found at {api.url}"


@on_sqlite
def test_study_delete_yes_does_not_ask(api: Api) -> None:
    created = api.http.post("/api/v1/studies", json=spec("delete-yes", n_trials=1)).json()
    out = hpsearch("study", "delete", str(created["id"]), "--yes", "--api", api.url)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout == f"study {created['id']} (delete-yes) deleted\n"
    assert api.http.get(f"/api/v1/studies/{created['id']}").status_code == 404


def test_study_trials_fetches_every_page(make_api: Any) -> None:
    # Fewer rows a page than the command asks for: it pages at the API's own size.
    api = make_api("sqlite", HPSEARCH_MAX_PAGE_SIZE="300")
    study_id = seed(api.database_url, 250)
    out = hpsearch("study", "trials", str(study_id), "--json", "--api", api.url)
    assert out.returncode == 0, out.stderr
    assert [t["number"] for t in json.loads(out.stdout)] == list(range(250))
    pruned = api.http.get(f"/api/v1/studies/{study_id}/trials", params={"state": "pruned"})
    table = hpsearch("study", "trials", str(study_id), "--state", "pruned", "--api", api.url)
    assert len(table_rows(table.stdout)) == pruned.json()["count"] > 0


# -- progress and tables -------------------------------------------------------------------------


@on_sqlite
def test_create_wait_shows_an_eta_while_trials_run(api: Api, tmp_path: Path) -> None:
    path = write_spec(tmp_path, spec("with-eta", n_trials=6))

    def an_epoch_of_training(params: dict[str, Any], epoch: int) -> float:
        time.sleep(0.3)  # the time it stands for: what the estimate is made of
        return plausible_accuracy(params, epoch)

    def created() -> bool:
        names = [s["name"] for s in api.http.get("/api/v1/studies").json()["data"]]
        return "with-eta" in names

    def train() -> None:
        wait_for(created, 60, "the study to be created", interval=0.05)
        run_study(api, "eta-worker", an_epoch_of_training)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    # A terminal, as rich sees one: the bar is redrawn as the study runs.
    out = hpsearch(
        "study",
        "create",
        str(path),
        "--wait",
        "--api",
        api.url,
        TTY_COMPATIBLE="1",
        TTY_INTERACTIVE="1",
    )
    assert out.returncode == 0, out.stderr
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.stdout)
    assert "eta -:--:--" in text  # before the first trial finished
    etas = [
        int(h) * 3600 + int(m) * 60 + int(s)
        for h, m, s in re.findall(r"eta (\d+):(\d\d):(\d\d)", text)
    ]
    assert any(eta > 0 for eta in etas), text[-2000:]  # an estimate while trials were left
    assert etas[-1] == 0
    assert re.search(r"6/6 .* eta 0:00:00 completed", text), text[-2000:]
    assert text.rstrip().endswith(": completed")
    trainer.join(10)


@on_sqlite
def test_a_60_character_name_survives_whole_in_study_list_at_80_columns(api: Api) -> None:
    name = "digits-wide-mlp-batchnorm-before-clip-norm-lr-sweep-seed-042"
    assert len(name) == 60
    created = api.http.post("/api/v1/studies", json=spec(name, n_trials=1)).json()
    out = hpsearch("study", "list", "--api", api.url, columns=80)
    assert out.returncode == 0, out.stderr
    assert "…" not in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    row = next(r for r in table_rows(out.stdout) if r[0] == str(created["id"]))
    assert row[1] == name
    api.http.delete(f"/api/v1/studies/{created['id']}")


@on_sqlite
def test_a_long_dataset_name_survives_whole_in_dataset_list_at_80_columns(api: Api) -> None:
    name = "household-energy-consumption-by-appliance-hourly-2019-2023-cleaned-v2"
    uploaded = api.http.post(
        "/api/v1/datasets", files={"file": ("e.npz", good_npz(seed=11))}, data={"name": name}
    )
    assert uploaded.status_code in (200, 201), uploaded.text
    ident = uploaded.json()["id"]
    out = hpsearch("dataset", "list", "--api", api.url, columns=80)
    assert out.returncode == 0, out.stderr
    assert "…" not in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    row = next(r for r in table_rows(out.stdout) if r[0] == ident)  # the id on one line
    assert row[1] == name
    api.http.delete(f"/api/v1/datasets/{ident}")


@on_sqlite
def test_a_long_token_name_survives_whole_in_token_list_at_80_columns(api: Api) -> None:
    name = "ci-runner-for-the-nightly-hyperparameter-regression-suite-on-gpu-box-3"
    hpsearch_cli(api.env, "token", "create", name)
    database = {k: api.env[k] for k in ("HPSEARCH_DATABASE_URL", "HPSEARCH_DATA_DIR")}
    out = hpsearch("token", "list", columns=80, **database)
    assert out.returncode == 0, out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    row = next(r for r in table_rows(out.stdout) if r[1] == name)
    assert re.fullmatch(r"tok_\w+", row[0])  # the id on one line
    # The one ellipsis is the API's: a secret's first characters, never more.
    assert re.fullmatch(r"hpsu_\w{4}…", row[3])
    assert [cell for cell in row if "…" in cell] == [row[3]]
