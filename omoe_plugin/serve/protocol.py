"""The wire formats omoe-serve reads and writes: the Open Inference Protocol's (KServe v2)
infer request and response, as JSON or with its binary tensor data extension
(Inference-Header-Content-Length, BYTES elements each behind a 4-byte little-endian length),
and the plain JSON form {"inputs": [...]} -> {"outputs": [...]}. Each request becomes one
column of texts per model input; anything malformed is a 400 that says what is wrong."""

import json
import struct
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..export.inference import decode_utf8
from .errors import Problem, bad_request, quoted
from .spec import VERSION, ModelSpec, Tensor

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class InferRequest:
    """A v2 infer request: its id, one column of texts (str, or bytes when sent as binary
    data) per model input in the model's order, and the outputs asked for (name -> sent as
    binary data)."""

    id: Optional[str]
    columns: list[list]
    outputs: dict[str, bool]


def load_json(raw: bytes) -> Any:
    """The JSON document of a request body, or a 400 saying why it is none."""
    try:
        return json.loads(decode_utf8(raw))
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise bad_request(f"malformed JSON: {e}") from None


def check_count(n: int, max_items: int) -> None:
    """A request holds 1 to max_items items: 400 for none, 413 for too many."""
    if n == 0:
        raise bad_request("the request holds no items")
    if n > max_items:
        raise Problem(413, f"the request holds {n} items, more than the server's --max-items "
                           f"{max_items}: split it")


def parse_infer(body: bytes, header_length: Optional[str], spec: ModelSpec,
                max_items: int) -> InferRequest:
    """A v2 infer request for `spec`'s model, checked: its inputs' names, datatypes (BYTES),
    shapes ([n] or [n, 1]) and element counts, and the outputs it asks for."""
    document, binary = _split(body, header_length)
    request = load_json(document)
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise bad_request('the request must be a JSON object with an "inputs" list')
    columns: dict[str, list] = {}
    offset = 0
    for tensor in inputs:
        name, values, offset = _read_input(tensor, binary, offset, spec)
        if name in columns:
            raise bad_request(f"input '{name}' is given twice")
        columns[name] = values
    if offset != len(binary):
        raise bad_request(f"{len(binary) - offset} bytes of binary data belong to no input")
    missing = [n for n in spec.inputs if n not in columns]
    if missing:
        raise bad_request(f"missing input '{missing[0]}': model '{spec.name}' takes "
                          f"{quoted(spec.inputs)}")
    counts = {name: len(values) for name, values in columns.items()}
    if len(set(counts.values())) > 1:
        raise bad_request(f"the inputs hold different numbers of items: {counts}")
    check_count(len(next(iter(columns.values()))), max_items)
    request_id = request.get("id")
    return InferRequest(None if request_id is None else str(request_id),
                        [columns[n] for n in spec.inputs], _outputs(request, spec))


def _split(body: bytes, header_length: Optional[str]) -> tuple[bytes, bytes]:
    """The JSON part of a body and its binary data (empty without the extension's header)."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise bad_request(f"{HEADER_LENGTH} {header_length!r} is not a length within the "
                          f"body's {len(body)} bytes")
    return body[:int(header_length)], body[int(header_length):]


def _read_input(tensor: Any, binary: bytes, offset: int,
                spec: ModelSpec) -> tuple[str, list, int]:
    """(name, its elements, the offset of the next input's binary data) of one input."""
    if not isinstance(tensor, dict):
        raise bad_request("each input must be an object with name, datatype, shape and data")
    name = tensor.get("name")
    if name not in spec.inputs:
        raise bad_request(f"unknown input {name!r}: model '{spec.name}' takes "
                          f"{quoted(spec.inputs)}")
    if tensor.get("datatype") != "BYTES":
        raise bad_request(f"input '{name}' has datatype {tensor.get('datatype')!r}: its texts "
                          "must be BYTES")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and len(shape) in (1, 2) and shape[1:] in ([], [1])
            and all(type(d) is int and d >= 0 for d in shape)):
        raise bad_request(f"input '{name}' has shape {shape!r}: expected [n] (or [n, 1]), "
                          "one text per item")
    parameters = tensor.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if type(size) is not int or not 0 <= size <= len(binary) - offset:
            raise bad_request(f"input '{name}': binary_data_size {size!r} runs past the body")
        values, offset = _unpack_bytes(binary[offset:offset + size], name), offset + size
    else:
        values = tensor.get("data")
        if not isinstance(values, list):
            raise bad_request(f"input '{name}' has no \"data\" list (nor binary data)")
        values = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]
    if len(values) != shape[0]:
        raise bad_request(f"input '{name}' has shape {shape} but {len(values)} elements")
    return name, values, offset


def _unpack_bytes(blob: bytes, name: str) -> list[bytes]:
    """The elements of a binary BYTES tensor: each a 4-byte little-endian length, then that
    many bytes."""
    values, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise bad_request(f"input '{name}': binary BYTES data ends inside a length")
        (length,) = struct.unpack_from("<I", blob, at)
        if at + 4 + length > len(blob):
            raise bad_request(f"input '{name}': a binary BYTES element runs past its data")
        values.append(blob[at + 4:at + 4 + length])
        at += 4 + length
    return values


def _outputs(request: dict, spec: ModelSpec) -> dict[str, bool]:
    """The outputs a request asks for (all when it names none), each -> sent as binary."""
    parameters = request.get("parameters")
    default = bool(parameters.get("binary_data_output", False)) \
        if isinstance(parameters, dict) else False
    asked = request.get("outputs")
    known = [name for name, _, _ in spec.outputs()]
    if asked is None:
        return {name: default for name in known}
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise bad_request('"outputs" must be a list of objects with a "name"')
    chosen = {}
    for output in asked:
        if output.get("name") not in known:
            raise bad_request(f"unknown output {output.get('name')!r}: model '{spec.name}' "
                              f"gives {quoted(known)}")
        parameters = output.get("parameters")
        parameters = parameters if isinstance(parameters, dict) else {}
        if parameters.get("classification"):
            raise bad_request("the classification extension is not supported: ask for "
                              "'label' and 'probabilities'")
        chosen[output["name"]] = bool(parameters.get("binary_data", default))
    return chosen


def infer_response(spec: ModelSpec, request: InferRequest,
                   tensors: dict[str, Tensor]) -> tuple[bytes, dict[str, str], str]:
    """The v2 response body, its headers and media type: each output asked for, as JSON data
    or as binary data after the JSON header."""
    header: dict[str, Any] = {"model_name": spec.name, "model_version": VERSION, "outputs": []}
    if request.id is not None:
        header["id"] = request.id
    blobs = []
    for name, binary in request.outputs.items():
        tensor = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary:
            blobs.append(_pack(tensor))
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = tensor.data if isinstance(tensor.data, list) \
                else tensor.data.ravel().tolist()
        header["outputs"].append(entry)
    document = json.dumps(header).encode()
    if not blobs:
        return document, {}, "application/json"
    return (document + b"".join(blobs), {HEADER_LENGTH: str(len(document))},
            "application/octet-stream")


def _pack(tensor: Tensor) -> bytes:
    """A tensor's binary data: BYTES as length-prefixed UTF-8, FP32 as little-endian floats."""
    if isinstance(tensor.data, list):
        encoded = [text.encode() for text in tensor.data]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return np.ascontiguousarray(tensor.data, dtype="<f4").tobytes()


def parse_plain(body: bytes, spec: ModelSpec, max_items: int) -> list[list]:
    """The columns of a plain request {"inputs": [...]}: one text per item, or for a model
    of two inputs a list of two texts per item ([text, text_pair], [question, context])."""
    request = load_json(body)
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list):
        raise bad_request('the request must be {"inputs": [...]}')
    check_count(len(inputs), max_items)
    if len(spec.inputs) == 1:
        return [inputs]
    for i, item in enumerate(inputs):
        if not (isinstance(item, list) and len(item) == 2):
            raise bad_request(f"item {i}: model '{spec.name}' takes two texts per item: give "
                              f"[{spec.inputs[0]}, {spec.inputs[1]}]")
    return [list(column) for column in zip(*inputs)]
