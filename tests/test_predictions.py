"""mlwarden.middleware.predictions: model responses → predictions, classes and confidences."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from mlwarden.middleware.errors import PayloadError
from mlwarden.middleware.predictions import PREDICTION_SKIP_REASONS, PredictionReader, Predictions


def payload_error(call: Callable[[], object], reasons: tuple[str, ...]) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        call()
    assert caught.value.reason in reasons
    return caught.value


def tensor(name: str, shape: list[int], data: list[Any], datatype: str = "FP64") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def read(payload: Any, content_type: str | None = "application/json", **options: Any):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return PredictionReader(**options).read(body, content_type)


def read_error(payload: Any, content_type: str | None = "application/json", **options: Any):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    reader = PredictionReader(**options)
    return payload_error(lambda: reader.read(body, content_type), PREDICTION_SKIP_REASONS).reason


# -- the contract ------------------------------------------------------------------------------


def test_prediction_skip_reasons_are_the_fixed_label_set():
    assert {
        "not_json",
        "invalid_json",
        "encoded",
        "too_large",
        "no_predictions",
        "reader_error",
        "streaming",
    } <= set(PREDICTION_SKIP_REASONS)
    assert len(PREDICTION_SKIP_REASONS) <= 10


def test_predictions_count_the_longer_of_values_and_classes():
    assert Predictions(values=[1.0], classes=["a", "b"], confidences=[]).count == 2


@pytest.mark.parametrize(
    "options",
    [
        {"prediction_path": ""},
        {"prediction_path": "a..b"},
        {"confidence_path": 3},
        {"max_items": 0},
    ],
)
def test_reader_rejects_invalid_options_with_value_error(options):
    with pytest.raises(ValueError):
        PredictionReader(**options)


def test_reader_has_a_readable_repr():
    assert "'result.scores'" in repr(PredictionReader(prediction_path="result.scores"))


# -- predictions ---------------------------------------------------------------------------


def test_kserve_predictions_of_numbers_are_values():
    assert read({"predictions": [0.5, 2, -3.25]}) == Predictions([0.5, 2.0, -3.25], [], [])


def test_predictions_of_strings_and_bools_are_classes():
    assert read({"predictions": ["cat", "dog"]}).classes == ["cat", "dog"]
    assert read({"predictions": [True, False]}).classes == ["true", "false"]


def test_probability_vectors_give_max_confidence_and_argmax_class():
    found = read({"predictions": [[0.1, 0.7, 0.2], [0.9, 0.1, 0.0]]})
    assert found == Predictions([], ["1", "0"], [0.7, 0.9])


def test_single_element_rows_are_scalar_predictions():
    assert read({"predictions": [[0.7], [0.2]]}).values == [0.7, 0.2]


def test_dict_items_give_label_and_score():
    found = read([{"label": "POSITIVE", "score": 0.98}, {"label": "NEGATIVE", "score": 0.6}])
    assert found == Predictions([], ["POSITIVE", "NEGATIVE"], [0.98, 0.6])


def test_dict_items_with_a_probability_map_give_argmax_key_and_max():
    found = read({"predictions": [{"probabilities": {"cat": 0.2, "dog": 0.8}}]})
    assert found == Predictions([], ["dog"], [0.8])


def test_dict_items_with_numeric_prediction_and_probability():
    found = read({"predictions": [{"prediction": 3.5, "probability": 0.4}]})
    assert found == Predictions([3.5], [], [0.4])


def test_top_level_dict_is_a_single_prediction():
    assert read({"predicted_class": "spam", "confidence": 0.91}) == Predictions(
        [], ["spam"], [0.91]
    )


def test_top_level_list_is_old_mlflow_predictions():
    assert read([1, 2, 3]).values == [1.0, 2.0, 3.0]


def test_top_level_number_and_string_are_single_predictions():
    assert read(b"0.25").values == [0.25]
    assert read(b'"cat"').classes == ["cat"]


def test_oip_outputs_first_tensor_is_the_prediction():
    body = {
        "model_name": "m",
        "outputs": [tensor("predict", [3], [1, 0, 1], "INT64"), tensor("other", [3], [9, 9, 9])],
    }
    assert read(body) == Predictions([1.0, 0.0, 1.0], [], [])


def test_oip_probabilities_output_gives_row_max_confidences():
    body = {
        "outputs": [
            tensor("label", [2], ["cat", "dog"], "BYTES"),
            tensor("probabilities", [2, 3], [0.2, 0.5, 0.3, 0.9, 0.05, 0.05]),
        ]
    }
    assert read(body) == Predictions([], ["cat", "dog"], [0.5, 0.9])


def test_oip_only_probabilities_give_classes_and_confidences():
    body = {"outputs": [tensor("proba", [2, 2], [[0.3, 0.7], [0.6, 0.4]])]}
    assert read(body) == Predictions([], ["1", "0"], [0.7, 0.6])


def test_oip_output_not_matching_its_shape_is_no_predictions():
    assert read_error({"outputs": [tensor("predict", [3], [1, 2])]}) == "no_predictions"


def test_prediction_path_with_list_index():
    body = {"outputs": [{"data": [0.1, 0.2]}], "meta": 1}
    assert read(body, prediction_path="outputs.0.data").values == [0.1, 0.2]


def test_prediction_path_to_a_nested_list():
    body = {"result": {"scores": [5, 6]}}
    assert read(body, prediction_path="result.scores").values == [5.0, 6.0]


def test_prediction_path_not_found_is_no_predictions():
    assert read_error({"result": {}}, prediction_path="result.scores") == "no_predictions"


def test_prediction_path_callable():
    body = {"r": [{"y": 1.5}, {"y": 2.5}]}
    found = read(body, prediction_path=lambda doc: [item["y"] for item in doc["r"]])
    assert found.values == [1.5, 2.5]


def test_prediction_path_callable_that_raises_is_reader_error():
    assert read_error({"r": []}, prediction_path=lambda doc: doc["missing"]) == "reader_error"


def test_confidence_path_replaces_confidences_from_the_items():
    body = {"predictions": [[0.1, 0.9]], "confidence": [0.55]}
    found = read(body, confidence_path="confidence")
    assert found == Predictions([], ["1"], [0.55])


def test_confidences_out_of_range_or_not_finite_are_dropped():
    body = (
        b'[{"label": "a", "score": 1.5}, {"label": "b", "score": NaN}, {"label": "c", "score": 1}]'
    )
    assert read(body) == Predictions([], ["a", "b", "c"], [1.0])


def test_non_finite_numeric_predictions_are_dropped():
    assert read(b'{"predictions": [1.0, NaN, Infinity, -Infinity, 2]}').values == [1.0, 2.0]


def test_predictions_are_capped_at_max_items():
    assert read({"predictions": list(range(100))}, max_items=10).values == [
        float(i) for i in range(10)
    ]


@pytest.mark.parametrize("content_type", ["text/html", "application/octet-stream"])
def test_non_json_response_is_not_json(content_type):
    assert read_error(b"<html></html>", content_type) == "not_json"


@pytest.mark.parametrize("body", [b"{", b'{"predictions": [1,]}', b'"\xff"', b"[" * 100_000])
def test_unreadable_json_response_is_invalid_json(body):
    assert read_error(body) == "invalid_json"


@pytest.mark.parametrize("body", [b"", b"null", b'{"predictions": []}', b'{"status": "ok"}'])
def test_response_without_predictions_is_no_predictions(body):
    assert read_error(body) == "no_predictions"


# -- confidences next to the predictions, and callables ---------------------------------------


@pytest.mark.parametrize(
    ("payload", "confidences"),
    [
        ({"predictions": ["a", "b"], "confidence": [0.9, 0.6]}, [0.9, 0.6]),
        ({"predictions": ["a"], "probabilities": [[0.1, 0.9]]}, [0.9]),
        ({"predictions": ["a"], "scores": [{"a": 0.7, "b": 0.3}]}, [0.7]),
        # A confidence source of its own replaces what the items carried.
        ({"predictions": [{"label": "a", "score": 0.2}], "confidences": [0.8]}, [0.8]),
        ({"predictions": [{"label": "a", "score": 0.2}]}, [0.2]),
    ],
)
def test_confidences_next_to_the_predictions_are_read(payload, confidences):
    got = read(payload)
    assert got.classes and got.confidences == confidences


def test_a_callable_confidence_path_is_given_the_document():
    got = read(
        {"out": {"cls": ["x", "y"], "p": (0.4, 0.9)}},
        prediction_path="out.cls",
        confidence_path=lambda doc: doc["out"]["p"],
    )
    assert (got.classes, got.confidences) == (["x", "y"], [0.4, 0.9])


def test_a_raising_confidence_path_is_a_reader_error():
    assert read_error({"predictions": ["a"]}, confidence_path=lambda doc: doc["missing"]) == (
        "reader_error"
    )


def test_a_confidence_path_neither_str_nor_callable_is_refused():
    with pytest.raises(ValueError, match="confidence_path must be a dotted path, a callable"):
        PredictionReader(confidence_path=3)  # type: ignore[arg-type]
