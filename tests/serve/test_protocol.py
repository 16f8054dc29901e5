"""omoe-serve speaks the Open Inference Protocol to a client nobody here wrote (tritonclient's
HTTP client: health, metadata, readiness, infer with JSON and binary tensors) and the plain
JSON form, for every kind of model in one process; its answers are omoe-infer's for the
same lines."""

import http.client
import io
import json
import socket
import statistics
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.http as triton

from omoe_plugin.export.inference import classify_stream, load_model
from omoe_plugin.serve.app import Settings, create_app
from omoe_plugin.serve.cli import open_socket
from tests.serve.conftest import ThreadServer

MAX_CHARS = 40  # small, so that a line is cut (with a note) at both ends alike
LINES = {  # per model: lines as omoe-infer reads them (a pair's texts tab-separated)
    "tiny": ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17", "w3 w3 unseen"],
    "pairs": ["w1 w2\tw3", "w4\tw5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18", "w9\tw9"],
    "ner": ["w1 w2, w3. w4", "w5", "w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20"],
    "qa": ["w1 w2?\tw3 w4 w5 w6 w7 w8", "w9\tw10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20 w21"],
}
INPUTS = {"tiny": ["text"], "pairs": ["text", "text_pair"], "ner": ["text"],
          "qa": ["question", "context"]}


@pytest.fixture(scope="module")
def served(models):
    loaded = {name: load_model(path, threads=1) for name, path in models.items()}
    server = ThreadServer(create_app(loaded, Settings(max_chars=MAX_CHARS)))
    yield server, loaded
    server.close()


def omoe_infer(model, lines: list[str]) -> list[dict]:
    """omoe-infer's records for these lines, without "line"."""
    out = io.StringIO()
    classify_stream(model, io.BytesIO("".join(f"{x}\n" for x in lines).encode()), out, 32,
                    max_chars=MAX_CHARS)
    return [{k: v for k, v in json.loads(r).items() if k != "line"}
            for r in out.getvalue().splitlines()]


def post(url: str, document: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(document).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", list(LINES))
def test_tritonclient_infers_what_omoe_infer_answers(served, name, binary):
    server, loaded = served
    client = triton.InferenceServerClient(server.url)
    columns = list(zip(*(line.split("\t") for line in LINES[name])))
    inputs = []
    for input_name, column in zip(INPUTS[name], columns):
        tensor = triton.InferInput(input_name, [len(column)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in column], dtype=object),
                                   binary_data=binary)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(o["name"], binary_data=binary)
               for o in client.get_model_metadata(name)["outputs"]]
    result = client.infer(name, inputs, outputs=outputs, request_id="r1")
    records = [json.loads(r) for r in result.as_numpy("result")]
    expected = omoe_infer(loaded[name], LINES[name])
    assert records == expected and result.get_response()["id"] == "r1"
    assert not any("error" in r for r in records)
    assert any("note" in r for r in records)  # a line was cut at MAX_CHARS, with its note
    if name in ("tiny", "pairs"):
        labels = loaded[name].labels
        np.testing.assert_array_equal(result.as_numpy("label").astype(str),
                                      [r["label"] for r in expected])
        np.testing.assert_allclose(result.as_numpy("probabilities"), [
            [r["probabilities"][c] for c in labels] for r in expected], rtol=1e-6)
    client.close()


def test_health_metadata_and_readiness_through_tritonclient(served):
    server, _ = served
    client = triton.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("qa") and client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("missing")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    metadata = client.get_model_metadata("pairs")
    assert metadata["platform"] == "onnxruntime"
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]},
                                  {"name": "text_pair", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]} == {
        "result": ("BYTES", [-1]), "label": ("BYTES", [-1]), "probabilities": ("FP32", [-1, 2])}
    assert [i["name"] for i in client.get_model_metadata("qa")["inputs"]] == [
        "question", "context"]
    assert [o["name"] for o in client.get_model_metadata("ner")["outputs"]] == ["result"]
    # no outputs named: every output, as binary data (what tritonclient asks by default)
    tensor = triton.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"w1 w2"], dtype=object))
    result = client.infer("tiny", [tensor])
    assert result.as_numpy("probabilities").shape == (1, 2)
    client.close()


@pytest.mark.parametrize("name", list(LINES))
def test_the_plain_form_answers_omoe_infer_records(served, name):
    server, loaded = served
    items = [line.split("\t") if "\t" in line else line for line in LINES[name]]
    answer = post(f"http://{server.url}/models/{name}/predict", {"inputs": items})
    assert answer == {"outputs": omoe_infer(loaded[name], LINES[name])}


def test_the_model_list_names_each_kind(served):
    server, _ = served
    with urllib.request.urlopen(f"http://{server.url}/models", timeout=30) as response:
        listed = json.loads(response.read())["models"]
    assert {m["name"]: m["kind"] for m in listed} == {
        "tiny": "sentence-classification", "pairs": "sentence-classification",
        "ner": "token-tagging", "qa": "extractive-QA"}


def test_answers_on_a_kept_alive_connection_are_not_held_back(served):
    """asyncio sets TCP_NODELAY only on sockets that say they are TCP: without it each answer
    on a kept-alive connection waited 40 ms for the client's delayed ACK (Nagle)."""
    server, _ = served
    with open_socket("127.0.0.1", 0, False) as sock:
        assert sock.proto == socket.IPPROTO_TCP
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    seconds = []
    for _ in range(10):
        started = time.perf_counter()
        connection.request("POST", "/models/tiny/predict", b'{"inputs": ["w1 w2"]}')
        connection.getresponse().read()
        seconds.append(time.perf_counter() - started)
    connection.close()
    assert statistics.median(seconds) < 0.03, seconds
