"""`unifashion serve`: the HTTP API over a tiny model and index (FastAPI's TestClient), every error
status the issue lists, the security checks, and a server killed with SIGKILL after an upsert."""

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from unifashion_cli.main import app as cli
from unifashion_core.data.manifest import load_dataset
from unifashion_core.errors import UserError
from unifashion_core.retrieval.search import Query, load_searcher, rank, search
from unifashion_core.serve.app import create_app
from unifashion_core.serve.service import Service
from unifashion_core.serve.settings import ServeSettings, check_exposure, is_loopback

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV, KEY = "UNIFASHION_TEST_KEY", "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY, MAX_PIXELS = 300_000, 250_000
runner = CliRunner()


@pytest.fixture(scope="module")
def built(tiny_index: Path) -> Path:
    return tiny_index


def fresh_copy(built: Path, target: Path) -> Path:
    shutil.copytree(built, target)
    return target


@pytest.fixture(scope="module")
def key_env():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, KEY)
        yield


@pytest.fixture(scope="module")
def client(built: Path, key_env, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    index = fresh_copy(built, tmp_path_factory.mktemp("served") / "index")
    settings = ServeSettings(index=index, api_key_env=KEY_ENV, max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS)
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def data(tiny_phase1: Path):
    dataset = load_dataset(tiny_phase1 / "data")
    return dataset, dataset.split("test")


def png(size: tuple[int, int], colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def ranks(answer: dict) -> list[str]:
    return [hit["id"] for hit in answer["results"]]


def check_error(response: httpx.Response, status: int, words: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and body["error"].endswith(".") and "Traceback" not in body["error"]
    assert words.lower() in body["error"].lower(), body["error"]


def test_search_by_text_image_both_and_with_a_filter(client: TestClient, data, tiny_phase1: Path) -> None:
    dataset, test_items = data
    text = client.post("/search", json={"text": "red striped shirt", "k": 5})
    assert text.status_code == 200, text.text
    answer = text.json()
    assert answer["mode"] == "t2i" and answer["num_items"] == len(test_items) and len(answer["results"]) == 5
    assert [hit["rank"] for hit in answer["results"]] == [1, 2, 3, 4, 5]
    scores = [hit["score"] for hit in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    first = answer["results"][0]
    assert first["image_url"] == f"/items/{first['id']}/image" and first["fields"]["split"] == "test"
    model, view = load_searcher(client.app.state.service.settings.index, None)  # the library gives the same
    library = search(model, view, text="red striped shirt", k=5)
    assert [r.id for r in library] == ranks(answer)
    assert [r.score for r in library] == pytest.approx(scores, abs=1e-5)

    item = test_items[3]
    image = dataset.image_path(item).read_bytes()
    upload = {"image": ("query.png", image, "image/png")}
    by_image = client.post("/search", files=upload, data={"k": "4"}).json()
    assert by_image["mode"] == "i2t" and len(by_image["results"]) == 4
    similar = client.post("/search", files=upload, data={"k": "4", "mode": "i2i"}).json()
    assert similar["mode"] == "i2i"
    assert ranks(similar) == [r.id for r in search(model, view, image=dataset.image_path(item), k=4, mode="i2i")]
    like = client.post("/search", json={"item": item.id, "mode": "i2i", "k": 4}).json()  # its stored vectors
    stored = rank(view, Query("i2i", view.image_vectors_of(item.id)[None]), 4)
    assert ranks(like) == [r.id for r in stored]
    assert [h["score"] for h in like["results"]] == pytest.approx([r.score for r in stored], abs=1e-5)
    composed = client.post("/search", files=upload, data={"text": "in blue", "k": "6"}).json()
    assert composed["mode"] == "cir" and len(composed["results"]) == 6
    # a phase-1 checkpoint: the zero-shot late fusion with its recipe's image weight, as `unifashion search`
    assert composed["composed_score"] == "zero-shot (image weight 0.4)" and text.json()["composed_score"] is None
    zero_shot = search(model, view, "in blue", dataset.image_path(item), k=6, composed="zero-shot")
    assert ranks(composed) == [r.id for r in zero_shot]
    assert [h["score"] for h in composed["results"]] == pytest.approx([r.score for r in zero_shot], abs=1e-5)
    by_item = client.post("/search", json={"item": item.id, "text": "in blue", "k": 6}).json()
    assert ranks(by_item) == ranks(composed)  # the item's own image file, embedded as the upload is
    image_only = client.post("/search", json={"item": item.id, "text": "in blue", "k": 1, "image_weight": 1.0}).json()
    assert image_only["composed_score"] == "zero-shot (image weight 1)" and ranks(image_only) == [item.id]
    fused = client.post("/search", json={"item": item.id, "text": "in blue", "k": 6, "composed": "fused"}).json()
    assert fused["composed_score"] == "fused"
    assert ranks(fused) == [r.id for r in search(model, view, "in blue", dataset.image_path(item), k=6)]
    without = client.post("/search", json={"item": item.id, "text": "in blue", "k": 6, "composed": "fused",
                                            "use_captions": False})
    assert [h["score"] for h in without.json()["results"]] != [h["score"] for h in fused["results"]]

    category = item.category
    wanted = [i for i in test_items if i.category == category]
    filtered = client.post("/search", json={"text": "shirt", "k": 100, "filter": {"category": category}}).json()
    assert sorted(ranks(filtered)) == sorted(i.id for i in wanted)
    form_filter = client.post("/search", files=upload, data={"text": "in blue", "filter": json.dumps(
        {"category": [category]}), "k": "3"}).json()
    assert {hit["fields"]["category"] for hit in form_filter["results"]} == {category}


def test_upsert_find_replace_and_delete(client: TestClient, data) -> None:
    dataset, test_items = data
    picture = dataset.image_path(dataset.split("train")[0]).read_bytes()
    created = client.post("/items", headers=AUTH, files={"image": ("new.png", picture, "image/png")},
                          data={"id": "new-1", "text": "a bright green checked skirt",
                                "fields": json.dumps({"category": "skirt", "brand": "acme", "year": 2024})})
    assert created.status_code == 200, created.text
    size = len(test_items) + 1
    assert created.json() == {"upserted": ["new-1"], "replaced": [], "num_items": size}
    record = client.get("/items/new-1").json()
    assert record == {"id": "new-1", "caption": "a bright green checked skirt", "image_url": "/items/new-1/image",
                      "fields": {"category": "skirt", "brand": "acme", "year": "2024"}}
    image = client.get("/items/new-1/image")
    assert image.status_code == 200 and image.content == picture and image.headers["content-type"] == "image/png"
    like = client.post("/search", json={"item": "new-1", "mode": "i2i", "k": 100}).json()
    assert like["results"][ranks(like).index("new-1")]["score"] == pytest.approx(1.0, abs=2e-3)  # itself
    acme = client.post("/search", json={"text": "skirt", "filter": {"brand": "acme"}}).json()
    assert ranks(acme) == ["new-1"] and acme["num_items"] == size

    other = dataset.image_path(test_items[0]).read_bytes()
    encoded = base64.urlsafe_b64encode(other).decode().rstrip("=")
    many = client.post("/items", headers={"X-API-Key": KEY}, json={"items": [
        {"id": "new-1", "text": "now a red dress", "image": encoded, "fields": {"brand": "acme"}},
        {"id": "new-2", "text": "a yellow shirt", "image": encoded}]})
    assert many.status_code == 200, many.text
    assert many.json() == {"upserted": ["new-1", "new-2"], "replaced": ["new-1"], "num_items": size + 1}
    assert client.get("/items/new-1").json()["caption"] == "now a red dress"
    assert client.get("/items/new-1/image").content == other

    base_id = test_items[5].id
    for item_id in ("new-1", "new-2", base_id):
        deleted = client.delete(f"/items/{item_id}", headers=AUTH)
        assert deleted.status_code == 200 and deleted.json()["deleted"] == item_id
        check_error(client.get(f"/items/{item_id}"), 404, item_id)
    after = client.post("/search", json={"text": "shirt", "k": 100}).json()
    assert after["num_items"] == size - 2 and not {"new-1", "new-2", base_id} & set(ranks(after))
    check_error(client.post("/search", json={"text": "skirt", "filter": {"category": "skirt", "brand": "acme"}}),
                400, "cannot filter on 'brand'")


def test_every_error_is_json_with_the_right_status(client: TestClient, data) -> None:
    dataset, test_items = data
    image = dataset.image_path(test_items[0]).read_bytes()
    big = {"image": ("big.png", b"\0" * (MAX_BODY + 10), "image/png")}
    check_error(client.post("/search", files=big), 413, "larger than")  # declared length

    def chunks():
        for _ in range(40):
            yield b"x" * 10_000

    streamed = client.post("/search", content=chunks(), headers={"Content-Type": "application/json"})
    check_error(streamed, 413, "larger than")  # no Content-Length: counted while it arrives
    check_error(client.post("/search", files={"image": ("huge.png", png((600, 500)), "image/png")}), 413, "pixel")
    check_error(client.post("/search", files={"image": ("bad.png", b"not an image at all", "image/png")}), 400,
                "not in an image format")
    check_error(client.post("/search", files={"image": ("cut.png", image[: len(image) // 2], "image/png")}), 400)
    check_error(client.post("/search", files={"image": ("notes.txt", b"hello", "text/plain")}), 415, "text/plain")
    check_error(client.post("/search", content=b"text=red", headers={"Content-Type": "text/plain"}), 415)
    check_error(client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"}), 422,
                "not valid json")
    check_error(client.post("/search", json=["red"]), 422, "object")
    check_error(client.post("/search", json={"txt": "red"}), 422, "unknown field 'txt'")
    check_error(client.post("/search", files={"image": ("q.png", image, "image/png")}, data={"colour": "red"}), 422,
                "unknown field")
    check_error(client.post("/search", data={"text": "red", "filter": "{oops"}, files={"x": ("a", b"", "")}), 422)
    check_error(client.post("/search", files=[("image", ("a.png", image, "image/png")),
                                              ("image", ("b.png", image, "image/png"))]), 422, "twice")
    check_error(client.post("/search", content=b"xx", headers={"Content-Type": "multipart/form-data"}), 400,
                "boundary")
    for k in (0, 101, "ten"):
        check_error(client.post("/search", json={"text": "red", "k": k}), 422, "k")
    check_error(client.post("/search", json={"text": "red", "mode": "sideways"}), 422, "mode")
    check_error(client.post("/search", json={"text": "red", "composed": "late"}), 422, "composed")
    for weight in (-0.1, 1.5, "heavy"):
        check_error(client.post("/search", json={"text": "red", "image_weight": weight}), 422, "image_weight")
    check_error(client.post("/search", json={"k": 3}), 400, "give a text")
    check_error(client.post("/search", json={"text": "red", "mode": "i2i"}), 400, "mode i2i takes")
    check_error(client.post("/search", files={"image": ("q.png", image, "image/png")}, data={"item": "x"}), 400,
                "not both")
    check_error(client.post("/search", json={"text": "red", "filter": {"fabric": "silk"}}), 400, "cannot filter")
    for response in (client.get("/items/nope"), client.get("/items/nope/image"),
                     client.delete("/items/nope", headers=AUTH), client.post("/search", json={"item": "nope"}),
                     client.post("/caption", json={"item": "nope"}), client.get("/no/such/page")):
        check_error(response, 404)
    check_error(client.put("/search", json={"text": "red"}), 405)
    upload = {"image": ("n.png", image, "image/png")}
    fields = {"id": "x1", "text": "a shirt"}
    check_error(client.post("/items", files=upload, data=fields), 401, "api key")
    check_error(client.post("/items", files=upload, data=fields, headers={"X-API-Key": "wrong"}), 401)
    check_error(client.delete(f"/items/{test_items[0].id}", headers={"Authorization": "Bearer nope"}), 401)
    check_error(client.post("/items", data=fields, headers=AUTH, files={"x": ("a", b"", "")}), 422, "image")
    check_error(client.post("/items", files=upload, data={"text": "a shirt"}, headers=AUTH), 422, "'id' is required")
    check_error(client.post("/items", json={"items": []}, headers=AUTH), 422)
    check_error(client.post("/items", json={"items": [{"id": "x", "text": "t", "image": "%%%"}]}, headers=AUTH), 422,
                "base64")
    check_error(client.post("/items", json={"items": [{"id": "x", "text": "t", "image": "bm90IGFuIGltYWdl"}]},
                            headers=AUTH), 400, "image")
    check_error(client.post("/items", files={"image": ("n.txt", b"hi", "text/plain")}, data=fields, headers=AUTH), 415)
    check_error(client.post("/caption", json={"style": "poetic", "item": test_items[0].id}), 400, "style")
    check_error(client.post("/caption", json={}), 422, "image")
    assert client.get(f"/items/{test_items[0].id}").status_code == 200  # nothing was written by the failures
    assert client.post("/search", json={"text": "red shirt"}).status_code == 200  # and it keeps serving


def test_caption_and_generate(client: TestClient, data) -> None:
    dataset, test_items = data
    image = dataset.image_path(test_items[1]).read_bytes()
    captioned = client.post("/caption", files={"image": ("q.png", image, "image/png")}, data={"max_new_tokens": "8"})
    assert captioned.status_code == 200, captioned.text
    assert captioned.json()["style"] == "short" and isinstance(captioned.json()["caption"], str)
    by_item = client.post("/caption", json={"item": test_items[1].id, "max_new_tokens": 8})
    assert by_item.json() == captioned.json()  # the same image, the same greedy caption
    generated = client.post("/generate", json={"text": "red dress", "steps": 1, "seed": 3})
    assert generated.status_code == 200 and generated.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(generated.content))
    assert picture.text["unifashion:seed"] == "3" and picture.text["unifashion:text"] == "red dress"
    assert json.loads(generated.headers["x-unifashion-generation"])["steps"] == 1
    edited = client.post("/generate", files={"image": ("q.png", image, "image/png")},
                         data={"text": "in blue", "steps": "1"})
    assert edited.status_code == 200 and Image.open(io.BytesIO(edited.content)).text["unifashion:image"] == \
        "(uploaded image)"


def test_health_metrics_docs_and_gallery(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["writes"] == "api-key" and health["has_captions"]
    assert set(health["heads"]) == {"caption", "generate"} and health["kind"] == "flat"
    client.post("/search", json={"text": "blue dress"})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'unifashion_requests_total{method="POST",route="/search",status="200"}' in metrics.text
    assert 'unifashion_request_seconds_bucket{le="0.03",method="POST",route="/search"}' in metrics.text
    assert f"unifashion_catalogue_items {float(health['num_items'])}" in metrics.text
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "k" in spec["components"]["schemas"]["SearchQuery"]["properties"]
    assert {"/items", "/items/{item_id}", "/items/{item_id}/image", "/caption", "/generate"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and 'id="query-text"' in page.text and "http" not in page.text.split("<body>")[1]
    assert client.get("/static/app.js").status_code == 200


def test_queries_that_wait_for_the_model_are_embedded_together(client: TestClient, data, monkeypatch) -> None:
    import threading

    from unifashion_core.retrieval.search import embed_query

    dataset, test_items = data
    service = client.app.state.service
    batcher, model = service._batcher, service.model
    texts = [f"a {colour} striped shirt" for colour in ("red", "blue", "green", "black", "white", "pink")]
    image = Image.open(dataset.image_path(test_items[2])).convert("RGB")
    asked = [("t2i", text, None) for text in texts] + [("cir", "in blue", image), ("i2i", None, image),
                                                       ("cir", "in red", image, "zero-shot")]
    calls: list[int] = []
    embed_texts = batcher.encoders.texts

    def counted(batch: list[str]):
        calls.append(len(batch))
        if "boom" in batch:
            raise ValueError("a query the model cannot take")
        return embed_texts(batch)

    monkeypatch.setattr(batcher.encoders, "texts", counted)
    answers: dict[int, object] = {}

    def ask(i: int, query: tuple) -> None:
        try:
            answers[i] = batcher.embed(*query)
        except ValueError as exc:
            answers[i] = exc

    with batcher.model_lock:  # the model is busy: every query waits, then one pass per mode embeds them
        threads = [threading.Thread(target=ask, args=(i, q)) for i, q in enumerate(asked)]
        for thread in threads:
            thread.start()
        while batcher._queue.qsize() < len(asked) - 1:  # the model thread holds the first, waiting for the lock
            time.sleep(0.01)
    for thread in threads:
        thread.join(60)
    assert calls[0] == len(texts)  # the six texts in one pass
    calls.clear()
    with batcher.model_lock:  # a failing query in a batch fails alone: the batch is retried one by one
        threads = [threading.Thread(target=ask, args=(i, ("t2i", text, None)))
                   for i, text in zip((100, 101, 102), ("red", "boom", "blue"), strict=True)]
        for thread in threads:
            thread.start()
        while batcher._queue.qsize() < 2:
            time.sleep(0.01)
    for thread in threads:
        thread.join(60)
    assert calls == [3, 1, 1, 1] and isinstance(answers[101], ValueError)
    assert answers[100].vectors.shape == answers[102].vectors.shape == (1, answers[0].vectors.shape[1])
    for i, (mode, text, picture, *composed) in enumerate(asked):
        alone = embed_query(model, mode, text, picture, *composed)  # the eager model: the traced graphs agree
        assert answers[i].mode == mode and answers[i].vectors.shape == alone.vectors.shape
        np.testing.assert_allclose(answers[i].vectors, alone.vectors, atol=1e-5)
        assert (answers[i].texts is None) == (alone.texts is None) == (composed != ["zero-shot"])
        if alone.texts is not None:  # zero-shot composed: the image's vectors and the text's, apart
            np.testing.assert_allclose(answers[i].texts, alone.texts, atol=1e-5)


def test_the_model_thread_runs_torch_with_its_own_thread_count(client: TestClient, tmp_path: Path) -> None:
    import threading

    import torch

    from unifashion_core.serve.batcher import QueryBatcher

    service = client.app.state.service
    batcher = QueryBatcher(service.model, threading.Lock(), threads=1)
    seen: list[int] = []
    embed_texts = batcher.encoders.texts

    def texts(batch: list[str]):
        seen.append(torch.get_num_threads())
        return embed_texts(batch)

    batcher.encoders.texts = texts  # type: ignore[method-assign]
    try:
        assert batcher.embed("t2i", "a red shirt", None).vectors.shape[0] == 1
    finally:
        batcher.close()
    assert seen == [1]
    cores = os.cpu_count() or 1
    assert ServeSettings(index=tmp_path).query_threads() == max(1, cores - 1)  # a core left to the HTTP side
    assert ServeSettings(index=tmp_path, threads=3).query_threads() == 3
    with service._threads():  # captions, generation and upserts take every core on their request thread
        assert torch.get_num_threads() == service._eager_threads


def test_read_only_server_without_generator(built: Path, tmp_path: Path, data) -> None:
    dataset, test_items = data
    settings = ServeSettings(index=fresh_copy(built, tmp_path / "index"), read_only=True, generate=False)
    with TestClient(create_app(settings)) as client:
        image = dataset.image_path(test_items[0]).read_bytes()
        check_error(client.post("/items", files={"image": ("n.png", image, "image/png")},
                                data={"id": "x", "text": "t"}), 403, "read-only")
        check_error(client.delete(f"/items/{test_items[0].id}"), 403)
        check_error(client.post("/generate", json={"text": "red dress"}), 501, "generate")
        assert client.get("/healthz").json()["writes"] == "disabled"


def test_open_loopback_writes_need_no_key(built: Path, tmp_path: Path, data) -> None:
    dataset, test_items = data
    with TestClient(create_app(ServeSettings(index=fresh_copy(built, tmp_path / "index"), generate=False))) as client:
        image = dataset.image_path(test_items[0]).read_bytes()
        response = client.post("/items", files={"image": ("n.png", image, "image/png")},
                               data={"id": "local", "text": "t"})
        assert response.status_code == 200 and client.get("/healthz").json()["writes"] == "open"


def test_writes_are_not_exposed_without_a_key(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(map(is_loopback, ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]")))
    assert not any(map(is_loopback, ("0.0.0.0", "192.168.1.5", "example.com", "::")))
    with pytest.raises(UserError, match="without an API key"):
        create_app(ServeSettings(index=built, host="0.0.0.0"))  # refused before anything is loaded
    check_exposure(ServeSettings(index=built, host="0.0.0.0", read_only=True))
    monkeypatch.setenv(KEY_ENV, "k")
    check_exposure(ServeSettings(index=built, host="0.0.0.0", api_key_env=KEY_ENV))
    monkeypatch.setenv(KEY_ENV, "")
    with pytest.raises(UserError, match="unset or empty"):
        check_exposure(ServeSettings(index=built, api_key_env=KEY_ENV))


def test_an_index_built_by_another_model_is_refused(built: Path, tmp_path: Path) -> None:
    index = fresh_copy(built, tmp_path / "index")
    meta = json.loads((index / "meta.json").read_text())
    (index / "meta.json").write_text(json.dumps({**meta, "fingerprint": "0123456789abcdef"}))
    with pytest.raises(UserError, match="different model"):
        Service(ServeSettings(index=index))
    result = runner.invoke(cli, ["serve", "--index", str(index), "--port", str(free_port())])
    assert result.exit_code == 2 and "different model" in result.output and "Traceback" not in result.output


def test_serve_help_is_instant_and_loads_no_web_stack() -> None:
    code = ("import sys; from typer.testing import CliRunner; from unifashion_cli.main import app; "
            "r = CliRunner().invoke(app, ['serve', '--help']); "
            "print(r.exit_code, 'torch' in sys.modules, 'fastapi' in sys.modules, '--api-key-env' in r.output)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.split() == ["0", "False", "False", "True"], result.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(index: Path, port: int) -> subprocess.Popen:
    """`unifashion serve` in a subprocess on a free loopback port, once it answers /healthz."""
    command = [sys.executable, "-m", "unifashion_cli.main", "serve", "--index", str(index), "--port", str(port),
               "--api-key-env", KEY_ENV, "--no-generate", "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, KEY_ENV: KEY}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300  # a busy machine takes minutes to import torch
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {server.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.3)
    server.kill()
    raise AssertionError("the server did not start within 300 s")


def test_an_acknowledged_upsert_survives_sigkill(built: Path, tmp_path: Path, data) -> None:
    dataset, test_items = data
    index, port = fresh_copy(built, tmp_path / "index"), free_port()
    url = f"http://127.0.0.1:{port}"
    picture = dataset.image_path(dataset.split("train")[2]).read_bytes()
    server = start_server(index, port)
    try:
        response = httpx.post(f"{url}/items", headers=AUTH, files={"image": ("k.png", picture, "image/png")},
                              data={"id": "survivor", "text": "a coat that outlives its server",
                                    "fields": json.dumps({"brand": "phoenix"})}, timeout=60)
        deleted = httpx.delete(f"{url}/items/{test_items[0].id}", headers=AUTH, timeout=60)
        os.kill(server.pid, signal.SIGKILL)  # right after the acknowledgements: no shutdown, no flush
        assert response.status_code == 200 and deleted.status_code == 200, response.text
    finally:
        server.kill()
        server.wait()
    server = start_server(index, port)
    try:
        record = httpx.get(f"{url}/items/survivor").json()
        assert record["caption"] == "a coat that outlives its server"
        assert httpx.get(f"{url}/items/survivor/image").content == picture
        found = httpx.post(f"{url}/search", json={"text": "coat", "filter": {"brand": "phoenix"}}).json()
        assert ranks(found) == ["survivor"]
        like = httpx.post(f"{url}/search", json={"item": "survivor", "mode": "i2i", "k": 100}).json()
        assert "survivor" in ranks(like)
        assert httpx.get(f"{url}/items/{test_items[0].id}").status_code == 404
    finally:
        server.terminate()
        server.wait(timeout=30)
