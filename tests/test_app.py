"""app.py: the real server on a free port, called over HTTP with real photos, and its page in Chromium."""
import asyncio
import base64
import io
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi import HTTPException
from harness import AppServer
from PIL import Image

import app
from effnet.inference.classifier import Classifier

REPO = Path(__file__).resolve().parents[1]
MAX_UPLOAD_MB, MAX_FILES = 1, 4  # small limits, so that the bad-input tests stay small


@pytest.fixture(scope="module")
def server(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python app.py` serving the trained test checkpoint on a free port: yields its base URL."""
    log = tmp_path_factory.mktemp("app") / "server.log"
    with AppServer("--weights", str(trained_run / "best.pth"), "--max-upload-mb", str(MAX_UPLOAD_MB),
                   "--max-files", str(MAX_FILES), log=log) as running:
        yield running.url
    assert "Application shutdown complete" in log.read_text()  # stopped cleanly, model thread included


@pytest.fixture(scope="module")
def classifier(trained_run: Path) -> Classifier:
    """The same checkpoint, in this process: what the server's answers must equal."""
    return Classifier.from_weights(trained_run / "best.pth")


def photos(flowers: Path, count: int) -> list[Path]:
    """`count` real photos spread over the five classes."""
    found = sorted(flowers.glob("*/*.jpg"))
    return [found[i * len(found) // count] for i in range(count)]


def post(base: str, paths: list[Path], field: str = "file", client: httpx.Client | None = None,
         **params: object) -> httpx.Response:
    files = [(field, (path.name, path.read_bytes(), "image/jpeg")) for path in paths]
    return (client or httpx).post(f"{base}/predict", files=files, params=params, timeout=60)


def assert_same_answers(results: list[dict], paths: list[Path], classifier: Classifier, top_k: int) -> None:
    expected = classifier.predict(paths, top_k)
    assert [result["file"] for result in results] == [path.name for path in paths]
    for result, prediction in zip(results, expected):
        assert [p["class"] for p in result["predictions"]] == [name for name, _ in prediction.ranked]
        for answer, (_, probability) in zip(result["predictions"], prediction.ranked):
            assert answer["probability"] == pytest.approx(probability, abs=1e-4)


def test_predict_returns_each_photos_top_k_as_the_classifier_ranks_them(server, classifier, flower_sample):
    chosen = photos(flower_sample, 3)
    response = post(server, chosen, top_k=2)
    assert response.status_code == 200, response.text
    assert_same_answers(response.json()["results"], chosen, classifier, 2)
    everything = post(server, chosen[:1]).json()["results"][0]["predictions"]  # default: min(5, classes)
    assert len(everything) == len(classifier.class_names)
    assert sum(p["probability"] for p in everything) == pytest.approx(1, abs=1e-4)


def test_model_health_and_openapi_describe_the_server(server, trained_run, classifier):
    model = httpx.get(f"{server}/model").json()
    assert model["variant"] == "b0" and model["backend"] == classifier.backend.name == "onnxruntime"  # best.onnx
    assert model["classes"] == classifier.class_names and model["origin"] == str(trained_run / "best.onnx")
    assert model["max_files"] == MAX_FILES and model["max_upload_bytes"] == MAX_UPLOAD_MB * 2**20
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    assert {"/predict", "/gradcam", "/health", "/model"} <= set(httpx.get(f"{server}/openapi.json").json()["paths"])


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A 100-byte PNG whose header claims 900 megapixels: Pillow's decompression-bomb check must refuse it."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IHDR")
    data[start + 4:start + 12] = struct.pack(">II", width, height)
    data[start + 17:start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start:start + 17])))
    return bytes(data)


def bad_requests(data: bytes) -> dict[str, tuple[dict, int, list[str]]]:
    """name -> (httpx.post arguments, expected status, words the error must contain); `data` is a real photo."""
    big = b"\xff" * (MAX_UPLOAD_MB * 2**20 + 1000)

    def streamed():  # no Content-Length: the server must count as it reads
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    return {
        "not an image": ({"files": {"file": ("notes.txt", b"just some text")}}, 400, ["notes.txt", "not an image"]),
        "truncated photo": ({"files": {"file": ("cut.jpg", data[: len(data) // 2])}}, 400, ["cut.jpg", "decode"]),
        "empty upload": ({"files": {"file": ("empty.jpg", b"")}}, 400, ["empty.jpg", "empty upload"]),
        "decompression bomb": ({"files": {"file": ("bomb.png", bomb_png())}}, 413, ["bomb.png", "too large"]),
        "too many files": ({"files": [("file", (f"{i}.jpg", data)) for i in range(MAX_FILES + 1)]}, 400,
                           ["too many files", str(MAX_FILES)]),
        "wrong field name": ({"files": {"image": ("rose.jpg", data)}}, 400, ["'file'", "'image'"]),
        "no body": ({}, 400, ["'file'"]),
        "too big": ({"files": {"file": ("big.jpg", big)}}, 413, ["upload too large", "--max-upload-mb"]),
        "too big, streamed": ({"content": streamed(), "headers": {"content-type": "multipart/form-data; boundary=b"}},
                              413, ["upload too large"]),
        "top_k 0": ({"files": {"file": ("rose.jpg", data)}, "params": {"top_k": 0}}, 422, ["top_k"]),
    }


@pytest.mark.parametrize("case", list(bad_requests(b"")))
def test_bad_input_gets_a_json_error_naming_the_problem_and_the_server_goes_on(server, flower_sample, case):
    photo = photos(flower_sample, 1)[0]
    arguments, status, words = bad_requests(photo.read_bytes())[case]
    response = httpx.post(f"{server}/predict", timeout=60, **arguments)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert all(word in error for word in words), error
    assert post(server, [photo]).status_code == 200  # still serving


def test_an_oversized_upload_is_refused_from_its_headers_before_any_body_is_sent(server):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                           b"Content-Length: 1000000000\r\n\r\n")  # 1 GB announced, nothing sent
        answer = b"".join(iter(lambda: connection.recv(65536), b"")).decode()  # until the server closes
    assert answer.startswith("HTTP/1.1 413") and "upload too large: 1,000,000,000 bytes" in answer


def test_eight_clients_at_once_get_their_own_answers_in_shared_batches(server, classifier, flower_sample):
    chosen = photos(flower_sample, 40)
    expected = {p.name: prediction.ranked for p, prediction in zip(chosen, classifier.predict(chosen, 3))}
    before = httpx.get(f"{server}/health").json()

    def client(index: int) -> list[str]:
        problems = []
        with httpx.Client(timeout=120) as session:
            for request in range(25):
                photo = chosen[(index * 25 + request) % len(chosen)]
                response = post(server, [photo], client=session, top_k=3)
                if response.status_code != 200:
                    problems.append(f"{photo.name}: {response.status_code} {response.text}")
                    continue
                answer = response.json()["results"][0]
                ranked = [(p["class"], p["probability"]) for p in answer["predictions"]]
                if answer["file"] != photo.name or [c for c, _ in ranked] != [c for c, _ in expected[photo.name]] \
                        or any(abs(p - q) > 1e-4 for (_, p), (_, q) in zip(ranked, expected[photo.name])):
                    problems.append(f"{photo.name}: got {answer}, expected {expected[photo.name]}")
        return problems

    with ThreadPoolExecutor(8) as pool:
        problems = [problem for found in pool.map(client, range(8)) for problem in found]
    assert not problems, problems[:5]
    after = httpx.get(f"{server}/health")
    assert after.status_code == 200
    assert after.json()["images"] - before["images"] == 200
    assert after.json()["largest_batch"] > 1  # requests that arrived together shared a batch


def test_grad_cam_returns_an_overlay_of_the_top_class(server, classifier, flower_sample):
    photo = photos(flower_sample, 1)[0]
    response = httpx.post(f"{server}/gradcam", files={"file": (photo.name, photo.read_bytes())}, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["file"] == photo.name and answer["class"] == classifier.predict([photo])[0].ranked[0][0]
    header, encoded = answer["overlay"].split(",", 1)
    assert header == "data:image/png;base64"
    overlay = Image.open(io.BytesIO(base64.b64decode(encoded)))
    crop = classifier.preprocessing.crop
    assert overlay.format == "PNG" and overlay.size == (crop, crop)
    view = classifier.preprocessing.load_view(photo)
    assert overlay.tobytes() != view.tobytes()  # the heat map is drawn over the photo
    two = httpx.post(f"{server}/gradcam", files=[("file", (photo.name, photo.read_bytes()))] * 2)
    assert two.status_code == 400 and "too many files" in two.json()["error"]


def test_grad_cam_sees_exactly_the_input_the_prediction_saw(trained_run, flower_sample, monkeypatch):
    """The map explains the class shown beside it: Grad-CAM runs on the prediction's own input (the view the
    network saw, normalised), not on that view resized and cropped a second time, which changed the top
    class of 23 of 300 flower photos."""
    import torch

    classifier = Classifier.from_weights(trained_run / "best.pth", backend="torch")
    model = classifier.backend.model
    seen = []
    forward_features = model.forward_features
    monkeypatch.setattr(model, "forward_features", lambda x: seen.append(x.detach().clone()) or forward_features(x))
    for photo in photos(flower_sample, 3):
        _, _, target = classifier.grad_cam(photo)
        assert torch.equal(seen.pop()[0], torch.from_numpy(classifier.preprocess(photo)))
        assert classifier.class_names[target] == classifier.predict([photo])[0].ranked[0][0]


class ProbabilitiesOnly:
    """A backend that only answers probabilities, as ONNX Runtime's does: it has no gradients for Grad-CAM."""

    name = "probabilities only"

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.class_names, self.preprocessing, self.origin = inner.class_names, inner.preprocessing, inner.origin

    def probabilities(self, batch):
        return self.inner.probabilities(batch)


def test_grad_cam_opens_a_torch_model_once_when_the_backend_has_no_gradients(trained_run, classifier, flower_sample):
    opened = []

    def open_torch() -> Classifier:
        opened.append(True)
        return Classifier.from_weights(trained_run / "best.pth")

    service = app.Service(Classifier(ProbabilitiesOnly(classifier.backend)), open_torch, app.Limits())
    photo = photos(flower_sample, 1)[0]
    upload = app.Upload(photo.name, photo.read_bytes())

    async def classify_then_grad_cam_twice() -> list[dict]:
        await service.predict([upload], 3)
        assert not opened  # classifying does not need it
        return [await service.grad_cam(upload) for _ in range(2)]

    try:
        answers = asyncio.run(classify_then_grad_cam_twice())
    finally:
        service.close()
    assert len(opened) == 1
    assert answers[0] == answers[1] and answers[0]["class"] == classifier.predict([photo])[0].ranked[0][0]
    assert not service.worker.alive  # the model thread stops with the service

    def cannot_open() -> Classifier:
        raise FileNotFoundError("best.pth was moved")

    service = app.Service(Classifier(ProbabilitiesOnly(classifier.backend)), cannot_open, app.Limits())
    try:
        with pytest.raises(HTTPException) as refused:
            asyncio.run(service.grad_cam(upload))
    finally:
        service.close()
    assert refused.value.status_code == 503 and "best.pth was moved" in refused.value.detail


def test_the_page_classifies_a_photo_chosen_in_the_browser(server, page, flower_sample, classifier):
    photo = photos(flower_sample, 1)[0]
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(server + "/")
    page.wait_for_selector("#model b")
    assert "EfficientNet-B0" in page.inner_text("#model")
    assert ", ".join(classifier.class_names) in page.inner_text("#model")

    page.set_input_files("#file-input", str(photo))
    first = page.locator(".card .bar-label").first
    first.wait_for()
    top = classifier.predict([photo])[0].ranked[0]
    assert first.inner_text() == top[0]
    assert page.locator(".card .bar-value").first.inner_text() == f"{top[1] * 100:.1f}%"
    assert page.inner_text(".card .name") == photo.name

    page.click(".card .cam-button")
    page.wait_for_selector(".card .cam:not([hidden])")
    assert page.locator(".card .cam").evaluate("image => image.naturalWidth") == classifier.preprocessing.crop

    page.set_input_files("#file-input", str(REPO / "README.md"))  # not a photo: the card says why
    page.wait_for_selector(".card .status.error")
    assert "README.md: not an image" in page.inner_text(".card .status.error")
    outside = [url for url in requested if not url.startswith((server, "blob:", "data:"))]
    assert not outside, f"the page fetched from elsewhere: {outside}"


def test_the_page_takes_photos_dropped_on_it(server, page, flower_sample, classifier):
    chosen = photos(flower_sample, 2)
    page.goto(server + "/")
    dropped = page.evaluate_handle("""files => {
        const transfer = new DataTransfer();
        for (const [name, data] of files) {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
        }
        return transfer;
    }""", [[p.name, base64.b64encode(p.read_bytes()).decode()] for p in chosen])
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": dropped})
    page.locator(".card .bar").nth(2 * len(classifier.class_names) - 1).wait_for()
    shown = {page.locator(".card .name").nth(i).inner_text(): page.locator(".card").nth(i).locator(".bar-label").first
             .inner_text() for i in range(2)}
    assert shown == {p.name: prediction.ranked[0][0] for p, prediction in zip(chosen, classifier.predict(chosen))}


def test_startup_problems_are_one_line_errors(tmp_path, monkeypatch, capsys, trained_run):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        weights = str(trained_run / "best.pth")
        cases = {("--port", str(port), "--weights", weights): f"cannot listen on 127.0.0.1:{port}",
                 ("--port", "0"): "no trained checkpoint found",
                 ("--port", "0", "--weights", "missing.pth"): "missing.pth does not exist",
                 ("--top-k", "0"): "--top-k must be at least 1",
                 ("--max-upload-mb", "0"): "--max-upload-mb",
                 ("--max-upload-mb", "nan"): "--max-upload-mb nan: give a size in MiB of at least one byte",
                 ("--max-upload-mb", "inf"): "--max-upload-mb inf: give a size",
                 ("--max-upload-mb", "1e-9"): "--max-upload-mb 1e-09: give a size",  # would round to 0 bytes
                 ("--batch-wait-ms", "nan"): "--batch-wait-ms nan: give a wait of 0 ms or more"}
        for argv, words in cases.items():
            assert app.main(list(argv)) == 2
            error = capsys.readouterr().err
            assert error.startswith("error: ") and words in error and error.count("\n") == 1, error


def test_the_app_imports_no_torch_until_a_backend_needs_it():
    code = "import sys, app; print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_ctrl_c_stops_the_server_in_one_line_with_status_130(trained_run):
    import os
    import signal

    process = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--weights", str(trained_run / "best.onnx"),
                                "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout.readline().startswith("Serving ")
    process.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: interrupted: the server has shut down"]
