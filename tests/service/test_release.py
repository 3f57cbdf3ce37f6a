"""``POST /trials/{id}/release``: a worker hands back a trial it will not finish, because it is
stopping (re-run at once, no retry used) or because the trial's process died (re-run up to the
spec's ``max_retries``, then failed with the reason). Fake workers over real HTTP, on SQLite
and PostgreSQL; no training."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from tests.service.test_protocol import FakeWorker, create, study
from tests.support import query

DIED = "the trial process died (killed: SIGKILL) during epoch 2"


def release(
    worker: FakeWorker, trial: dict[str, Any], cause: str, reason: str = DIED
) -> httpx.Response:
    return worker.http.post(
        f"/api/v1/trials/{trial['trial_id']}/release",
        json={
            "worker_id": worker.id,
            "attempt": trial["attempt"],
            "cause": cause,
            "reason": reason,
        },
    )


def detail(api: Any, trial: dict[str, Any]) -> dict[str, Any]:
    return api.http.get(f"/api/v1/studies/{trial['study_id']}/trials/{trial['number']}").json()


def test_a_stopping_worker_s_trial_goes_at_once_to_the_next_worker_as_the_next_attempt(
    api: Any,
) -> None:
    s = create(api, "release-stopping", n_trials=1)
    leaving, next_one = FakeWorker(api.url, "leaving"), FakeWorker(api.url, "next-one")
    first = leaving.ask()
    assert leaving.report(first, 1).status_code == 200
    answer = release(leaving, first, "stopping", "worker leaving was stopped (SIGTERM)")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"state": "queued", "retries_left": 1}
    # No lease to wait for (4 s here): the very next ask gets it.
    second = next_one.ask()
    assert second is not None and second["trial_id"] == first["trial_id"]
    assert second["attempt"] == 2 and second["params"] == first["params"]
    assert leaving.report(first, 2).status_code == 409  # attempt 1 is over
    assert next_one.tell(second).status_code == 200
    final = study(api, s["id"])
    assert final["status"] == "completed" and final["finished"] == 1
    shown = detail(api, first)
    assert shown["attempt"] == 2 and shown["worker_id"] == "next-one"
    assert shown["reason"] == "attempt 1: worker leaving was stopped (SIGTERM); re-run"


def test_a_crashed_trial_is_rerun_up_to_max_retries_then_failed_with_the_reason(api: Any) -> None:
    s = create(api, "release-crashed", n_trials=1, max_retries=1)
    w = FakeWorker(api.url, "crashing")
    first = w.ask()
    assert release(w, first, "crashed").json() == {"state": "queued", "retries_left": 0}
    second = w.ask()
    assert second["trial_id"] == first["trial_id"] and second["attempt"] == 2
    assert detail(api, second)["reason"] == f"attempt 1: {DIED}; re-run"
    answer = release(
        w, second, "crashed", "the trial process died (killed: SIGKILL) during epoch 1"
    )
    assert answer.json() == {"state": "failed", "retries_left": 0}
    assert w.ask() is None
    final = study(api, s["id"])
    assert final["status"] == "completed" and final["trial_counts"]["failed"] == 1
    assert final["finished"] == 1
    shown = detail(api, first)
    assert shown["state"] == "failed" and shown["attempt"] == 2
    assert shown["reason"] == (
        "failed: attempt 2: the trial process died (killed: SIGKILL) during epoch 1; "
        f"no retries left (max_retries 1) (attempt 1: {DIED}; re-run)"
    )
    # Optuna was told too: the trial is finished there, and samplers skip it.
    [row] = query(
        api,
        "SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
        f"WHERE s.study_name = 'release-crashed#{s['id']}'",
    )
    assert row["state"] == "FAIL"


def test_with_max_retries_0_a_crash_fails_the_trial_at_once(api: Any) -> None:
    create(api, "release-no-retry", n_trials=1, max_retries=0)
    w = FakeWorker(api.url, "no-retry")
    trial = w.ask()
    assert release(w, trial, "crashed").json() == {"state": "failed", "retries_left": 0}
    shown = detail(api, trial)
    assert shown["state"] == "failed" and shown["attempt"] == 1
    assert shown["reason"] == f"failed: attempt 1: {DIED}; no retries left (max_retries 0)"


def test_a_repeated_release_changes_nothing_and_gets_the_same_answer(api: Any) -> None:
    s = create(api, "release-twice", n_trials=1)
    w, other = FakeWorker(api.url, "twice"), FakeWorker(api.url, "twice-other")
    trial = w.ask()
    first = release(w, trial, "crashed")
    seq = study(api, s["id"])["change_seq"]
    again = release(w, trial, "crashed", "said differently the second time")
    assert again.status_code == 200 and again.json() == first.json()
    assert study(api, s["id"])["change_seq"] == seq
    rerun = other.ask()
    assert rerun["attempt"] == 2
    # Even once the trial runs again elsewhere, the first release's answer stands.
    assert release(w, trial, "crashed").json() == first.json()
    assert detail(api, trial)["reason"] == f"attempt 1: {DIED}; re-run"
    assert detail(api, trial)["worker_id"] == "twice-other"
    other.tell(rerun)


def test_simultaneous_identical_releases_release_once(api: Any) -> None:
    create(api, "release-race", n_trials=1, max_retries=3)
    w = FakeWorker(api.url, "racing")
    trial = w.ask()
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        r = httpx.post(
            f"{api.url}/api/v1/trials/{trial['trial_id']}/release",
            json={"worker_id": w.id, "attempt": 1, "cause": "crashed", "reason": DIED},
            timeout=30,
        )
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in answers] == [200] * 4
    assert {r.text for r in answers} == {'{"state":"queued","retries_left":2}'}
    [row] = query(api, f"SELECT crashes, attempt FROM hps_trials WHERE id = {trial['trial_id']}")
    assert row == {"crashes": 1, "attempt": 1}
    assert w.ask()["attempt"] == 2
    w.tell({**trial, "attempt": 2})


def test_a_release_without_the_lease_gets_409_and_changes_nothing(api: Any) -> None:
    create(api, "release-not-mine", n_trials=2)
    owner, intruder = FakeWorker(api.url, "owner-r"), FakeWorker(api.url, "intruder-r")
    trial = owner.ask()
    for who, attempt in ((intruder, 1), (owner, 2)):
        refused = release(who, {**trial, "attempt": attempt}, "stopping")
        assert refused.status_code == 409, refused.text
        assert "no longer leased" in refused.json()["detail"]
    assert owner.report(trial, 1).status_code == 200  # still the owner's
    assert owner.tell(trial).status_code == 200
    finished = release(owner, trial, "crashed")
    assert finished.status_code == 409 and "already complete" in finished.json()["detail"]
    assert detail(api, trial)["state"] == "complete"
    # The intruder repeating a release the owner made is refused too.
    second = owner.ask()
    assert release(owner, second, "stopping").status_code == 200
    assert release(intruder, second, "stopping").status_code == 409
    again = owner.ask()
    assert again["trial_id"] == second["trial_id"] and again["attempt"] == 2
    assert owner.tell(again).status_code == 200


def test_a_bad_release_gets_a_field_error_and_an_unknown_trial_404(api: Any) -> None:
    create(api, "release-bad", n_trials=1)
    w = FakeWorker(api.url, "bad-release")
    trial = w.ask()
    bad = w.http.post(
        f"/api/v1/trials/{trial['trial_id']}/release",
        json={"worker_id": w.id, "attempt": 1, "cause": "bored", "reason": "x" * 2001},
    )
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"cause", "reason"}
    missing = release(w, {**trial, "trial_id": 987654321}, "stopping")
    assert missing.status_code == 404
    assert w.tell(trial).status_code == 200
