"""Dynamic micro-batching: requests that arrive while a batch runs make the next one (whole
requests, up to the batch size), a batch waits only for requests on their way in, the queue
is bounded; over HTTP, concurrent requests share runs, answer what a direct predict answers,
and /metrics counts them."""

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from omoe_plugin.export.inference import load_model
from omoe_plugin.serve.app import Settings, create_app
from omoe_plugin.serve.batcher import MicroBatcher
from omoe_plugin.serve.errors import Problem
from tests.serve.conftest import ThreadServer


class Recorder:
    """A predict that records its batches and holds the first until released."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.release = threading.Event()

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.release.wait(10)
        return [f"answer {item}" for item in items]


def test_requests_arriving_during_a_run_make_the_next_batch_of_whole_requests():
    async def main() -> None:
        predict = Recorder()
        batcher = MicroBatcher(predict, max_batch=4, max_delay=0.5, max_queue=100)
        batcher.start()
        first = batcher.submit(["a"])
        await asyncio.sleep(0.05)  # "a" runs alone: nothing else is on its way
        jobs = [batcher.submit([f"{n}1", f"{n}2"]) for n in "bcde"]
        assert batcher.queued == 8
        predict.release.set()
        answers = await asyncio.gather(first.future, *(job.future for job in jobs))
        assert answers[0] == ["answer a"] and answers[3] == ["answer d1", "answer d2"]
        assert predict.batches == [["a"], ["b1", "b2", "c1", "c2"], ["d1", "d2", "e1", "e2"]]
        await batcher.stop()
    asyncio.run(main())


def test_a_batch_waits_only_for_requests_on_their_way_in():
    async def main() -> None:
        predict = Recorder()
        predict.release.set()
        batcher = MicroBatcher(predict, max_batch=8, max_delay=5.0, max_queue=100)
        batcher.start()
        started = time.monotonic()
        await batcher.submit(["alone"]).future  # no one else arriving: no wait
        assert time.monotonic() - started < 1.0
        with batcher.arrival():  # a request being read: the first one waits for it
            first = batcher.submit(["x"])
            await asyncio.sleep(0.2)
            second = batcher.submit(["y"])
        await asyncio.gather(first.future, second.future)
        assert predict.batches == [["alone"], ["x", "y"]]
        await batcher.stop()
    asyncio.run(main())


def test_the_queue_is_bounded_and_a_discarded_request_leaves_it():
    async def main() -> None:
        predict = Recorder()
        batcher = MicroBatcher(predict, max_batch=2, max_delay=0, max_queue=3)
        batcher.start()
        running = batcher.submit(["a"])
        await asyncio.sleep(0.05)
        waiting = batcher.submit(["b", "c", "d"])
        with pytest.raises(Problem) as refused:
            batcher.submit(["e"])
        assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
        batcher.discard(waiting)
        assert batcher.queued == 0 and waiting.future.cancelled()
        last = batcher.submit(["e"])
        predict.release.set()
        assert await last.future == ["answer e"] and await running.future == ["answer a"]
        assert predict.batches == [["a"], ["e"]]
        await batcher.stop()
    asyncio.run(main())


class Paced:
    """A served model whose every run takes 0.2 s longer (so that concurrent requests meet)."""

    def __init__(self, model) -> None:
        self.model, self.info, self.problem = model, model.info, model.problem

    def predict(self, items: list, batch_size: int = 32) -> list:
        time.sleep(0.2)
        return self.model.predict(items, batch_size)


def metrics(url: str) -> dict:
    """(sample name, labels) -> value of the server's /metrics."""
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_concurrent_http_requests_share_runs_answer_as_predict_and_are_counted(models):
    model = load_model(models["tiny"], threads=1)
    server = ThreadServer(create_app({"tiny": Paced(model)}, Settings(max_batch_size=8)))
    texts = [" ".join(f"w{(n * 7 + k) % 40}" for k in range(1 + n % 9)) for n in range(16)]

    def ask(text: str) -> dict:
        body = json.dumps({"inputs": [text]}).encode()
        with urllib.request.urlopen(f"http://{server.url}/models/tiny/predict", body,
                                    timeout=30) as response:
            return json.loads(response.read())["outputs"][0]
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, texts))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://{server.url}/models/tiny/predict", b"{", timeout=30)
        assert refused.value.code == 400
        counted = metrics(server.url)
    finally:
        server.close()
    for text, answer in zip(texts, answers):
        [alone] = model.predict([text])
        assert answer["label"] == alone.label
        assert answer["probabilities"] == pytest.approx(alone.probabilities, abs=1e-6)
    model_label = (("model", "tiny"),)
    runs = counted[("omoe_serve_batch_size_count", model_label)]
    assert runs < 16 and counted[("omoe_serve_batch_size_sum", model_label)] == 16
    assert counted[("omoe_serve_requests_total", (("model", "tiny"), ("status", "200")))] == 16
    assert counted[("omoe_serve_requests_total", (("model", "tiny"), ("status", "400")))] == 1
    assert counted[("omoe_serve_request_seconds_count", model_label)] == 17
    assert counted[("omoe_serve_queue_items", model_label)] == 0
