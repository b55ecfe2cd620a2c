"""The HTTP API's speed (`python -m benchmarks.speed --sections api`): app.py in its own process, called by 1 and by 8
concurrent clients, each request one real photo, as a page or a script sends them.

The reference is the same server with batching off (`--max-batch 1`: each request runs the model alone, at
batch 1); "app.py" is the server as it starts by default, batching the requests that arrive together. Both
serve the same weights (the variant at its evaluation size with random weights: speed does not depend on
what a model learned) and are measured in alternating rounds. Each figure is a whole request as a client
sees it: upload, decoding, the model, the JSON answer. The clients run in this process, on the same CPU
cores as the servers, as they would on one machine. For scale, the model alone (this process, no HTTP) at
batch 1 and batch 32 is measured too.
"""
import io
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from effnet.hardware import keep_freed_memory_for_reuse
from effnet.inference.classifier import Classifier
from tests.harness import AppServer, write_random_run

CLIENTS = (1, 8)
REQUESTS_PER_ROUND = 64  # per round and server, shared among the clients


def run_clients(base: str, photos: list[tuple[str, bytes]], clients: int, requests: int) -> tuple[float, list[float]]:
    """(seconds for all requests, each request's seconds) with `clients` clients sending one photo per request."""
    def client(index: int) -> list[float]:
        latencies = []
        with httpx.Client(base_url=base, timeout=300) as session:
            for number in range(index, requests, clients):
                name, data = photos[number % len(photos)]
                start = time.perf_counter()
                response = session.post("/predict", files={"file": (name, data, "image/jpeg")})
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()
        return latencies

    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        latencies = [seconds for found in pool.map(client, range(clients)) for seconds in found]
        return time.perf_counter() - start, latencies


def measure(bases: dict[str, str], photos: list[tuple[str, bytes]], rounds: int) -> dict[tuple[str, int], dict]:
    """(server, clients) -> {"rates": requests/s of each round, "latencies": seconds of every request}."""
    results: dict[tuple[str, int], dict] = {}
    for clients in CLIENTS:
        for base in bases.values():
            run_clients(base, photos, clients, clients * 2)  # warm-up: threads, connections, allocator
        for _ in range(rounds):
            for name, base in bases.items():
                seconds, latencies = run_clients(base, photos, clients, REQUESTS_PER_ROUND)
                entry = results.setdefault((name, clients), {"rates": [], "latencies": []})
                entry["rates"].append(REQUESTS_PER_ROUND / seconds)
                entry["latencies"] += latencies
    return results


def model_alone(weights: Path, variant: str, photos: list[tuple[str, bytes]],
                rounds: int) -> tuple[dict[int, float], str]:
    """(images/s of the served model in this process, without HTTP, at batch 1 and batch 32; its backend)."""
    keep_freed_memory_for_reuse()  # as app.py runs
    classifier = Classifier.from_weights(weights, variant)
    arrays = [classifier.preprocess(io.BytesIO(data)) for _, data in photos[:32]]
    rates = {}
    for batch in (1, 32):
        stacked = np.stack((arrays * 32)[:batch])
        classifier.probabilities(stacked)
        timings = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(32 // batch):
                classifier.probabilities(stacked)
            timings.append(time.perf_counter() - start)
        rates[batch] = 32 / statistics.median(timings)
    return rates, classifier.backend.name


def format_table(results: dict[tuple[str, int], dict], alone: dict[int, float]) -> str:
    lines = ["| measurement | batching off (--max-batch 1) | app.py (default) | ratio |", "|---|---|---|---|"]
    for clients in CLIENTS:
        off, on = results[("off", clients)], results[("on", clients)]
        rate_off, rate_on = statistics.median(off["rates"]), statistics.median(on["rates"])
        lines.append(f"| {clients} client{'s' if clients > 1 else ''}, throughput | {rate_off:.1f} requests/s | "
                     f"{rate_on:.1f} requests/s | {rate_on / rate_off:.2f}x |")
        for percentile in (50, 95):
            late_off = np.percentile(off["latencies"], percentile) * 1000
            late_on = np.percentile(on["latencies"], percentile) * 1000
            lines.append(f"| {clients} client{'s' if clients > 1 else ''}, p{percentile} latency | {late_off:.0f} ms | "
                         f"{late_on:.0f} ms | {late_on / late_off:.2f} of batching off |")
    lines.append(f"\nThe model alone in one process, no HTTP: {alone[1]:.1f} images/s at batch 1, "
                 f"{alone[32]:.1f} images/s at batch 32.")
    return "\n".join(lines)


def api_section(variant: str, photo_paths: list[str], rounds: int, threads: int | None = None) -> str:
    """The API table: two app.py servers (batching off and on), 1 and 8 clients, alternating rounds."""
    if not photo_paths:
        return "(API skipped: no photos)"
    photos = [(Path(path).name, Path(path).read_bytes()) for path in photo_paths]
    class_names = sorted({Path(path).parent.name for path in photo_paths})
    with tempfile.TemporaryDirectory() as folder:
        weights = write_random_run(Path(folder), variant, photo_paths, class_names)
        common = ("--weights", str(weights), "--model", variant, "--log-level", "warning")
        with AppServer(*common, "--max-batch", "1", log=Path(folder) / "off.log", threads=threads) as off, \
                AppServer(*common, log=Path(folder) / "on.log", threads=threads) as on:
            results = measure({"off": off.url, "on": on.url}, photos, rounds)
        alone, backend = model_alone(weights, variant, photos, rounds)
    return (f"HTTP API: app.py serving efficientnet_{variant} ({len(class_names)} classes, random weights, "
            f"{backend} backend as for a run's best.pth with its best.onnx), one "
            f"photo per request from {len(photos)} real photos; {REQUESTS_PER_ROUND} requests per round\n\n"
            + format_table(results, alone))
