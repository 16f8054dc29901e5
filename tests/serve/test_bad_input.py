"""What omoe-serve answers to bad input and overload: a 4xx (or 503, 504) with a clear
{"error": ...} for each kind of bad request, and the server goes on serving; a full queue
answers 503 with Retry-After, a request past its time 504, while other models keep
answering. (The table in docs/serving.md, "omoe-serve", lists these cases.)"""

import http.client
import json
import struct
import threading
import time

import pytest

from omoe_plugin.export.inference import load_model
from omoe_plugin.serve.app import Settings, create_app
from tests.serve.conftest import ThreadServer

SLOW_S = 1.5  # each run of the "slow" model
TIMEOUT_S = 1.0  # the server's --request-timeout-s
LIMITS = Settings(max_batch_size=8, max_queue=8, max_items=8, request_timeout_s=TIMEOUT_S)


class Slow:
    """A served model whose every run takes SLOW_S longer (so that its queue fills)."""

    def __init__(self, model) -> None:
        self.model, self.info, self.problem = model, model.info, model.problem

    def predict(self, items: list, batch_size: int = 32) -> list:
        time.sleep(SLOW_S)
        return self.model.predict(items, batch_size)


@pytest.fixture(scope="module")
def server(models):
    tiny = load_model(models["tiny"], threads=1)
    served = ThreadServer(create_app(
        {"tiny": tiny, "qa": load_model(models["qa"], threads=1), "slow": Slow(tiny)}, LIMITS))
    yield served
    served.close()


def request(server, method: str, path: str, body: bytes = b"",
            headers: dict = None) -> tuple[int, dict, dict]:
    """(status, JSON answer, headers) of one request over a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        connection.close()


def texts(*data, name="text", datatype="BYTES", shape=None) -> bytes:
    """A v2 infer request body of one JSON input."""
    return json.dumps({"inputs": [{"name": name, "datatype": datatype,
                                   "shape": shape or [len(data)], "data": list(data)}]}).encode()


def binary(*elements: bytes) -> tuple[bytes, dict]:
    """A v2 infer request of one input "text" sent as binary data, and its header."""
    blob = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(elements)],
                                   "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


INFER = "/v2/models/tiny/infer"
BAD = {  # id: (method, path, body, headers, status, the error says)
    "malformed-json": ("POST", INFER, b'{"inputs": [', {}, 400, "malformed JSON"),
    "body-not-utf8": ("POST", INFER, b'\xff{"inputs": []}', {}, 400, "not valid UTF-8"),
    "not-an-object": ("POST", INFER, b"[1, 2]", {}, 400, '"inputs" list'),
    "unknown-input-name": ("POST", INFER, texts("w1", name="txt"), {}, 400,
                           "unknown input 'txt': model 'tiny' takes 'text'"),
    "missing-input": ("POST", "/v2/models/qa/infer", texts("w1?", name="question"), {}, 400,
                      "missing input 'context'"),
    "wrong-datatype": ("POST", INFER, texts("w1", datatype="FP32"), {}, 400,
                       "datatype 'FP32': its texts must be BYTES"),
    "wrong-shape": ("POST", INFER, texts("w1", "w2", shape=[1, 2]), {}, 400, "expected [n]"),
    "shape-not-data": ("POST", INFER, texts("w1", "w2", shape=[3]), {}, 400,
                       "shape [3] but 2 elements"),
    "data-not-a-list": ("POST", INFER, json.dumps({"inputs": [{
        "name": "text", "datatype": "BYTES", "shape": [1], "data": "w1"}]}).encode(), {}, 400,
                        'no "data" list'),
    "element-not-a-string": ("POST", INFER, texts("w1", 7), {}, 400,
                             "item 1: not a string but int"),
    "empty-text": ("POST", INFER, texts("w1", ""), {}, 400,
                   "1 of 2 items cannot be answered: item 1: the text is empty"),
    "blank-text": ("POST", INFER, texts("  \t"), {}, 400, "item 0: the text is empty"),
    "non-utf8-bytes": ("POST", INFER, *binary(b"w1", b"\xff\xfe w2"), 400,
                       "item 1: not valid UTF-8 (byte 0xff at offset 0)"),
    "lone-surrogate": ("POST", INFER, b'{"inputs": [{"name": "text", "datatype": "BYTES", '
                       b'"shape": [1], "data": ["w1 \\ud800"]}]}', {}, 400, "lone surrogate"),
    "binary-past-body": ("POST", INFER, binary(b"w1")[0], {"Inference-Header-Content-Length":
                                                           "99999"}, 400, "not a length"),
    "no-items": ("POST", INFER, texts(), {}, 400, "no items"),
    "too-many-items": ("POST", INFER, texts(*["w1"] * 9), {}, 413,
                       "9 items, more than the server's --max-items 8"),
    "body-too-large": ("POST", INFER, texts("w1 " * 400_000), {}, 413, "--max-request-bytes"),
    "unknown-model": ("POST", "/v2/models/nope/infer", texts("w1"), {}, 404,
                      "no model named 'nope'"),
    "unknown-version": ("GET", "/v2/models/tiny/versions/2", b"", {}, 404, "no version '2'"),
    "unknown-output": ("POST", INFER, json.dumps({
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["w1"]}],
        "outputs": [{"name": "logits"}]}).encode(), {}, 400, "unknown output 'logits'"),
    "plain-pair-not-a-pair": ("POST", "/models/qa/predict", b'{"inputs": ["w1"]}', {}, 400,
                              "give [question, context]"),
    "plain-not-inputs": ("POST", "/models/tiny/predict", b'{"texts": ["w1"]}', {}, 400,
                         '{"inputs": [...]}'),
    "wrong-method": ("GET", INFER, b"", {}, 405, "Method Not Allowed"),
    "unknown-route": ("GET", "/v3/models", b"", {}, 404, "Not Found"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_clearly_and_the_server_goes_on(server, case):
    method, path, body, headers, status, says = BAD[case]
    got, answer, _ = request(server, method, path, body, headers)
    assert (got, list(answer)) == (status, ["error"]) and says in answer["error"], answer
    got, answer, _ = request(server, "POST", "/models/tiny/predict", b'{"inputs": ["w1 w2"]}')
    assert got == 200 and answer["outputs"][0]["label"] in ("neg", "pos")


def test_a_1mb_text_is_cut_to_max_chars_with_a_note(server):
    status, answer, _ = request(server, "POST", "/models/tiny/predict",
                                json.dumps({"inputs": ["w1 " * 333_333]}).encode())
    assert status == 200 and answer["outputs"][0]["note"] == "cut to its first 20000 characters"
    assert answer["outputs"][0]["truncated"] is True  # and then to the model's positions


@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after_and_a_late_answer_504(server):
    results = []

    def send() -> None:
        results.append(request(server, "POST", "/v2/models/slow/infer", texts(*["w1"] * 8)))

    clients = [threading.Thread(target=send) for _ in range(3)]
    for client in clients:  # one runs, one waits in the queue (8 items: full), one is refused
        client.start()
        time.sleep(0.1)
    started = time.monotonic()
    status, answer, _ = request(server, "POST", "/models/tiny/predict", b'{"inputs": ["w2"]}')
    assert status == 200 and time.monotonic() - started < SLOW_S  # other models go on
    for client in clients:
        client.join(30)
    assert sorted(status for status, _, _ in results) == [503, 504, 504]
    for status, answer, headers in results:
        if status == 503:
            assert headers["retry-after"] == "1" and "--max-queue 8" in answer["error"]
        else:
            assert "within the server's --request-timeout-s 1 s" in answer["error"]
    time.sleep(SLOW_S)  # the timed-out run ends; the queue is empty again
    assert request(server, "POST", "/v2/models/slow/infer", texts("w1"))[0] == 504
    assert server.app.state.server.batchers["slow"].queued == 0
