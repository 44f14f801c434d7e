"""The labelling server over HTTP on 127.0.0.1: tabs, conflicts, restarts, kill -9, media and injection."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from workflow_helpers import write_pool

from embedcache.workflow.app import bind, create_app
from embedcache.workflow.labels import LabelsFile, read_labels
from embedcache.workflow.session import LabellingSession
from embedcache.workflow.suggest import suggest
from embedcache.workflow.workspace import Workspace

INJECTION = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


@contextlib.contextmanager
def served(session: LabellingSession):
    """The app on a free loopback port in a thread; yields (host, port)."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(session), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def call(address, method: str, path: str, body=None, headers=None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection(*address, timeout=30)
    payload = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if body is not None else {}
    connection.request(method, path, body=payload, headers={**sent, **(headers or {})})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


def api(address, path: str, body=None) -> dict:
    status, _, data = call(address, "GET" if body is None else "POST", path, body)
    assert status == 200, data
    return json.loads(data)


@pytest.fixture
def pool(tmp_path):
    return write_pool(tmp_path / "pool", n=60)


def _session(cache, labels_path, **options) -> LabellingSession:
    workspace = Workspace(cache, split="train", classes=["negative", "positive"])
    return LabellingSession(workspace, LabelsFile(labels_path), annotator="ann", **options)


def test_labelling_refits_reranks_and_survives_a_restart(pool, tmp_path):
    cache, truth = pool
    labels_path = tmp_path / "labels.csv"
    with served(_session(cache, labels_path, round_size=4)) as address:
        state = api(address, "/api/state?tab=a")
        assert state["strategy"] == "random" and state["example"]["predicted"] is None  # cold start
        assert state["example"]["text"].startswith("review ") and state["classes"] == ["negative", "positive"]
        seen = []
        for _ in range(9):
            example = state["example"]["id"]
            seen.append(example)
            state = api(address, "/api/label", {"tab": "a", "id": example, "label": truth[example]})
            assert state["message"] == f"Labelled {example} as {truth[example]}." and not state["conflict"]
        assert state["strategy"] == "least-confidence" and state["example"]["predicted"] in truth.values()
        assert len(set(seen)) == 9 and state["example"]["id"] not in seen
        panel = state["panel"]
        assert panel["labelled"] == 9 and sum(panel["counts"].values()) == 9 and panel["rounds"] == 2
        assert panel["changes"]["stop_set"] == 48 and panel["changes"]["round"]["since_labels"] == 8
        assert [s["name"] for s in panel["signals"]][0] == "stabilizing-predictions"
        assert sum(n for per_class in panel["groups"]["topic"].values() for n in per_class.values()) == 9
        undone = api(address, "/api/undo", {"tab": "a"})
        assert undone["example"]["id"] == seen[-1] and undone["panel"]["labelled"] == 8
        skipped = api(address, "/api/skip", {"tab": "a", "id": seen[-1]})
        assert skipped["panel"]["skipped"] == 1 and skipped["example"]["id"] != seen[-1]
        before_restart = skipped["example"]["id"]
    # a new server on the same file continues where the old one stopped, as `suggest` would rank
    state = read_labels(labels_path)
    assert [r.id for r in state.labels()] == seen[:8] and state.skipped() == {seen[-1]}
    with served(_session(cache, labels_path, round_size=4)) as address:
        restarted = api(address, "/api/state?tab=b")
        assert restarted["panel"]["labelled"] == 8 and restarted["panel"]["skipped"] == 1
        expected = suggest(Workspace(cache, split="train", classes=["negative", "positive"]), state, k=8,
                           round_size=4)
        assert restarted["example"]["id"] == expected.suggestions[0].id == before_restart
        assert restarted["queue"] == [s.id for s in expected.suggestions]


def test_two_tabs_see_different_examples_and_never_label_one_twice(pool, tmp_path):
    cache, truth = pool
    labels_path = tmp_path / "labels.csv"
    with served(_session(cache, labels_path)) as address:
        a = api(address, "/api/state?tab=a")["example"]["id"]
        b = api(address, "/api/state?tab=b")["example"]["id"]
        assert a != b
        first = api(address, "/api/label", {"tab": "a", "id": a, "label": "positive"})
        second = api(address, "/api/label", {"tab": "b", "id": a, "label": "negative"})  # a stale tab
        assert not first["conflict"] and second["conflict"]
        assert second["message"].startswith(f"Not saved: id '{a}' is already labelled 'positive'")
        assert second["example"]["id"] != a
        # many concurrent requests for one id: exactly one label is written
        results = []

        def post(tab):
            results.append(api(address, "/api/label", {"tab": tab, "id": b, "label": "negative"})["conflict"])
        threads = [threading.Thread(target=post, args=(f"t{i}",)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == [False] + [True] * 5
    assert [r.id for r in read_labels(labels_path).rows] == [a, b]


def test_bad_requests_are_refused_with_their_reason(pool, tmp_path):
    cache, _ = pool
    with served(_session(cache, tmp_path / "labels.csv")) as address:
        status, _, data = call(address, "POST", "/api/label", {"tab": "a", "id": "nope", "label": "positive"})
        assert status == 400 and "unknown id 'nope'" in json.loads(data)["error"]
        status, _, data = call(address, "POST", "/api/label", {"tab": "a", "id": "doc055", "label": "positive"})
        assert status == 400 and "not in the pool" in json.loads(data)["error"]  # a val row
        status, _, data = call(address, "POST", "/api/label", {"tab": "a", "id": "doc001", "label": "maybe"})
        assert status == 400 and "'maybe' is not one of the classes" in json.loads(data)["error"]
        # changes need a JSON body from this origin: a form post from another site is refused
        status, _, _ = call(address, "POST", "/api/label", headers={"Content-Type": "text/plain"})
        assert status == 415
        status, _, _ = call(address, "POST", "/api/undo", {"tab": "a"}, headers={"Origin": "http://evil.example"})
        assert status == 403
        status, _, _ = call(address, "GET", "/api/state", headers={"Host": "evil.example"})  # DNS rebinding
        assert status == 400
    assert not (tmp_path / "labels.csv").exists()


def test_media_is_served_only_from_inside_the_media_folder(tmp_path):
    cache, _ = write_pool(tmp_path / "photos", n=6, images=True)
    (tmp_path / "secret.png").write_bytes(b"\x89PNG secret")
    (tmp_path / "photos" / "images" / "link.png").symlink_to(tmp_path / "secret.png")
    (tmp_path / "photos" / "images" / "notes.txt").write_text("not an image")
    workspace = Workspace(cache)
    session = LabellingSession(workspace, LabelsFile(tmp_path / "labels.csv"))
    with served(session) as address:
        example = api(address, "/api/state?tab=a")["example"]
        assert example["image"].startswith("/media/images/doc") and example["text"] is None
        status, headers, data = call(address, "GET", example["image"])
        assert status == 200 and headers["content-type"] == "image/png" and data.startswith(b"\x89PNG")
        for path in ("/media/../secret.png", "/media/%2e%2e/secret.png", "/media/images/../../secret.png",
                     "/media/%2Fetc%2Fpasswd", "/media//etc/passwd", "/media/images/link.png",
                     "/media/images/notes.txt", "/media/images/missing.png", "/media/images/..%5c..%5csecret.png"):
            status, _, data = call(address, "GET", path)
            assert status in (403, 404) and b"secret" not in data, path


def test_untrusted_text_only_travels_as_json_under_a_strict_policy(tmp_path):
    texts = [INJECTION] * 10
    cache, _ = write_pool(tmp_path / "pool", n=10, texts=texts)
    with served(_session(cache, tmp_path / "labels.csv")) as address:
        status, headers, page = call(address, "GET", "/")
        assert status == 200 and b"<script src=\"/static/app.js\"" in page and b"pwned" not in page
        policy = headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        status, headers, data = call(address, "GET", "/api/state?tab=a")
        assert headers["content-type"] == "application/json" and json.loads(data)["example"]["text"] == INJECTION
        assert headers["x-content-type-options"] == "nosniff"
        status, _, script = call(address, "GET", "/static/app.js")
        assert b"innerHTML" not in script and b"insertAdjacentHTML" not in script and b"document.write" not in script
        assert call(address, "GET", "/static/../app.py")[0] == 404


def _start_server(cache: Path, labels_path: Path, env: dict | None = None) -> tuple[subprocess.Popen, tuple]:
    process = subprocess.Popen([sys.executable, "-m", "embedcache.cli", "label", str(cache), "--labels",
                                str(labels_path), "--port", "0", "--split", "train", "--classes", "negative,positive"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, **(env or {})})
    line = process.stdout.readline()
    assert line.startswith("Labelling page: http://127.0.0.1:"), line
    port = int(line.split()[2].rstrip("/").rsplit(":", 1)[1])
    return process, ("127.0.0.1", port)


def test_kill_9_of_the_server_loses_no_confirmed_label(pool, tmp_path):
    cache, truth = pool
    labels_path = tmp_path / "labels.csv"
    process, address = _start_server(cache, labels_path)
    try:
        confirmed = []
        state = api(address, "/api/state?tab=a")
        for _ in range(7):
            example = state["example"]["id"]
            state = api(address, "/api/label", {"tab": "a", "id": example, "label": truth[example]})
            confirmed.append(example)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert [r.id for r in read_labels(labels_path).labels()] == confirmed
    # killed between the write and its fsync: the request is never confirmed, the file stays readable, and a
    # restarted server continues from it
    process, address = _start_server(cache, labels_path, {"EMBEDCACHE_CRASH_AT": "labels.written"})
    try:
        state = api(address, "/api/state?tab=a")
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            call(address, "POST", "/api/label", {"tab": "a", "id": state["example"]["id"], "label": "positive"})
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
    finally:
        process.kill()
    ids = [r.id for r in read_labels(labels_path).labels()]
    assert ids[:7] == confirmed and len(ids) <= 8
    process, address = _start_server(cache, labels_path)
    try:
        assert api(address, "/api/state?tab=a")["panel"]["labelled"] == len(ids)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_label_refuses_a_labels_file_naming_ids_the_cache_lacks_before_listening(pool, tmp_path):
    from click.testing import CliRunner

    from embedcache.cli import main

    cache, _ = pool
    labels = LabelsFile(tmp_path / "labels.csv")
    labels.label("doc001", "positive")
    labels.label("ghost", "negative")
    result = CliRunner().invoke(main, ["label", str(cache), "--labels", str(tmp_path / "labels.csv"), "--port", "0"])
    assert result.exit_code == 1 and "'ghost' (line 3)" in result.output and "Labelling page" not in result.output
