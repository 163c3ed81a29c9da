"""mlwarden.middleware.payloads: request payloads → feature columns, format by format."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mlwarden.middleware.errors import PayloadError
from mlwarden.middleware.payloads import (
    PAYLOAD_ERROR_REASONS,
    PAYLOAD_FORMATS,
    FeatureBatch,
    FeatureRow,
    PayloadParser,
)

FEATURES = ("age", "income", "city")


def parser(**options: Any) -> PayloadParser:
    return PayloadParser(features=options.pop("features", FEATURES), **options)


def parse(payload: Any, content_type: str | None = "application/json", **options: Any):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    batch = parser(**options).parse(body, content_type)
    assert batch.format in PAYLOAD_FORMATS
    assert list(batch.columns) == list(options.get("features", FEATURES))
    assert all(len(column) == batch.rows for column in batch.columns.values())
    return batch


def payload_error(call: Callable[[], object], reasons: tuple[str, ...] = PAYLOAD_ERROR_REASONS):
    with pytest.raises(PayloadError) as caught:
        call()
    assert caught.value.reason in reasons
    return caught.value


def parse_error(payload: Any, content_type: str | None = "application/json", **options: Any):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return payload_error(lambda: parser(**options).parse(body, content_type)).reason


# -- the contract ------------------------------------------------------------------------------


def test_payload_error_reasons_are_the_fixed_label_set():
    assert set(PAYLOAD_ERROR_REASONS) == {
        "empty_body",
        "not_utf8",
        "invalid_json",
        "too_deep",
        "invalid_csv",
        "unsupported_content_type",
        "unsupported_format",
        "shape_mismatch",
        "nested_value",
        "too_many_rows",
        "no_known_features",
        "extractor_error",
        "too_large",
        "body_not_read",
    }
    assert len(set(PAYLOAD_ERROR_REASONS)) == len(PAYLOAD_ERROR_REASONS)


def test_feature_batch_is_frozen():
    batch = FeatureBatch(rows=1, columns={"a": [1]}, format="object")
    with pytest.raises(AttributeError):
        batch.rows = 2  # type: ignore[misc]
    assert batch.unknown_features == 0


@pytest.mark.parametrize(
    "options",
    [
        {"features": "age"},
        {"features": ["age", "age"]},
        {"features": ["age", ""]},
        {"features": ["age"], "max_rows": 0},
        {"features": ["age"], "max_rows": True},
        {"features": ["age"], "extractor": "not callable"},
    ],
)
def test_parser_rejects_invalid_options_with_value_error(options):
    with pytest.raises(ValueError):
        PayloadParser(**options)


def test_parser_has_a_readable_repr():
    assert "max_rows=5" in repr(parser(max_rows=5))


# -- JSON objects and lists ----------------------------------------------------------------


def test_single_object_is_one_row_in_baseline_order():
    batch = parse({"city": "Oslo", "age": 41, "income": 5200.5})
    assert isinstance(batch, FeatureRow)  # the fast path: no per-feature lists built
    assert batch.values == (41, 5200.5, "Oslo")
    assert (batch.rows, batch.columns, batch.format, batch.unknown_features) == (
        1,
        {"age": [41], "income": [5200.5], "city": ["Oslo"]},
        "object",
        0,
    )


def test_missing_feature_is_none_and_null_is_none():
    batch = parse({"age": None, "city": "Oslo"})
    assert batch.columns == {"age": [None], "income": [None], "city": ["Oslo"]}
    assert batch.unknown_features == 0


def test_unknown_names_are_counted_never_kept():
    batch = parse({"age": 3, "income": 1.0, "city": "x", "evil": 1, "also_evil": 2})
    assert set(batch.columns) == set(FEATURES)
    assert batch.unknown_features == 2


def test_lists_mixed_with_single_values_are_a_nested_value_not_a_row_of_nones():
    assert parse_error({"age": [1, 2], "income": {"nested": 1}, "city": "Oslo"}) == "nested_value"
    assert parse_error({"age": [1, 2], "city": "Oslo"}) == "nested_value"


@pytest.mark.parametrize(
    "payload",
    [
        [{"age": [1], "income": 2.0}],  # a record's cell
        [[1, [2.0], "a"]],  # a positional row's cell
        {"age": [[1], [2]], "income": [1.0, 2.0]},  # a column's cell
        {"dataframe_records": [{"age": {"v": 1}}]},
        {"dataframe_split": {"columns": ["age"], "data": [[[1]]]}},
        {"inputs": [{"name": "age", "shape": [2], "datatype": "FP64", "data": [[1], [2]]}]},
    ],
)
def test_a_container_where_a_cell_is_expected_is_a_nested_value(payload):
    assert parse_error(payload) == "nested_value"


def test_bool_and_str_values_are_kept_raw():
    batch = parse({"age": True, "income": "12", "city": False})
    assert batch.columns == {"age": [True], "income": ["12"], "city": [False]}


def test_list_of_objects_gives_records_with_per_row_unknown_count():
    batch = parse([{"age": 1, "city": "a", "x": 0}, {"income": 2.5, "y": 1, "z": 2}])
    assert batch.rows == 2
    assert batch.format == "records"
    assert batch.columns == {"age": [1, None], "income": [None, 2.5], "city": ["a", None]}
    assert batch.unknown_features == 3


def test_list_of_lists_maps_positionally_onto_features():
    batch = parse([[1, 2.0, "a"], [3, 4.0, "b"]])
    assert batch.format == "rows"
    assert batch.columns == {"age": [1, 3], "income": [2.0, 4.0], "city": ["a", "b"]}


def test_top_level_list_of_scalars_as_wide_as_the_features_is_one_row():
    batch = parse([7, 1.5, "c"])
    assert batch.rows == 1
    assert batch.columns == {"age": [7], "income": [1.5], "city": ["c"]}


def test_positional_row_of_the_wrong_length_is_a_shape_mismatch():
    assert parse_error([[1, 2.0, "a"], [3, 4.0]]) == "shape_mismatch"


def test_rows_mixing_objects_and_lists_are_a_shape_mismatch():
    assert parse_error([{"age": 1}, [1, 2, 3]]) == "shape_mismatch"


def test_top_level_scalar_is_an_unsupported_format():
    assert parse_error(42) == "unsupported_format"


def test_empty_list_is_an_empty_batch():
    batch = parse([])
    assert batch.rows == 0
    assert batch.columns == {"age": [], "income": [], "city": []}


def test_protocol_key_that_is_a_baseline_feature_is_read_as_that_feature():
    batch = parse({"instances": 3, "age": 1}, features=("instances", "age"))
    assert batch.format == "object"
    assert batch.columns == {"instances": [3], "age": [1]}


# -- pandas column orientation -------------------------------------------------------------


def test_object_of_equal_length_lists_is_column_oriented():
    batch = parse({"age": [1, 2, 3], "income": [4.0, 5.0, 6.0], "extra": [0, 0, 0]})
    assert batch.format == "columns"
    assert batch.rows == 3
    assert batch.columns == {
        "age": [1, 2, 3],
        "income": [4.0, 5.0, 6.0],
        "city": [None, None, None],
    }
    assert batch.unknown_features == 3  # one unknown name in each of three rows


def test_object_of_index_dicts_is_column_oriented_in_index_order():
    batch = parse({"age": {"0": 1, "1": 2}, "city": {"1": "b", "0": "a"}})
    assert batch.columns == {"age": [1, 2], "income": [None, None], "city": ["a", "b"]}


def test_columns_of_different_lengths_are_a_shape_mismatch():
    assert parse_error({"age": [1, 2], "income": [1.0]}) == "shape_mismatch"


def test_column_orientation_longer_than_max_rows_is_too_many_rows():
    assert parse_error({"age": list(range(11))}, max_rows=10) == "too_many_rows"


# -- KServe v1 / TF-serving instances ------------------------------------------------------


def test_instances_of_objects():
    batch = parse({"instances": [{"age": 1, "income": 2.0, "city": "a"}, {"age": 2}]})
    assert batch.format == "kserve_v1"
    assert batch.columns == {"age": [1, 2], "income": [2.0, None], "city": ["a", None]}


def test_instances_of_lists_are_positional():
    batch = parse({"instances": [[1, 2.0, "a"], [2, 3.0, "b"]], "parameters": {"x": 1}})
    assert batch.columns == {"age": [1, 2], "income": [2.0, 3.0], "city": ["a", "b"]}


def test_instances_as_lists_of_the_baseline_width_are_positional_rows():
    batch = parse({"instances": [[0.5, 1.0, "a"], [-0.7, 2.0, "b"]]})
    assert batch.rows == 2
    assert batch.columns == {"age": [0.5, -0.7], "income": [1.0, 2.0], "city": ["a", "b"]}
    assert parse_error({"instances": [[0.5, 1.0], [-0.7, 2.0]]}) == "shape_mismatch"


def test_columns_inside_an_instance_are_that_many_rows():
    batch = parse({"instances": [{"age": [0.5, -0.7], "city": ["a", "b"], "extra": [1, 2]}]})
    assert batch.format == "kserve_v1"
    assert batch.rows == 2
    assert batch.columns == {"age": [0.5, -0.7], "income": [None, None], "city": ["a", "b"]}
    assert batch.unknown_features == 2  # "extra" in each of the two rows


def test_instances_of_columns_and_of_single_values_follow_each_other():
    batch = parse({"instances": [{"age": [1, 2]}, {"age": 3, "city": "c"}, {"other": 0}]})
    assert batch.columns == {
        "age": [1, 2, 3, None],
        "income": [None, None, None, None],
        "city": [None, None, "c", None],
    }
    assert batch.unknown_features == 1


def test_columns_of_different_lengths_inside_an_instance_are_a_shape_mismatch():
    assert parse_error({"instances": [{"age": [0.5, -0.7], "city": ["a"]}]}) == "shape_mismatch"


def test_columns_mixed_with_single_values_inside_an_instance_are_a_nested_value():
    assert parse_error({"instances": [{"age": [0.5, -0.7], "city": "a"}]}) == "nested_value"


def test_columns_inside_instances_are_bounded_by_max_rows_across_instances():
    payload = {"instances": [{"age": [1, 2, 3]}, {"age": [4, 5, 6]}]}
    assert parse(payload, max_rows=6).rows == 6
    assert parse_error(payload, max_rows=5) == "too_many_rows"


def test_instances_that_are_lists_of_records_give_one_row_per_record():
    batch = parse({"instances": [[{"age": 1}, {"age": 2, "x": 0}], [{"city": "c"}]]})
    assert batch.rows == 3
    assert batch.columns == {"age": [1, 2, None], "income": [None] * 3, "city": [None, None, "c"]}
    assert batch.unknown_features == 1
    assert parse_error({"instances": [[{"age": 1}], [1, 2, 3]]}) == "shape_mismatch"


def test_index_columns_with_different_row_labels_are_a_shape_mismatch():
    assert parse_error({"age": {"0": 1}, "city": {"0": "a", "1": "b"}}) == "shape_mismatch"


def test_two_envelopes_in_one_body_are_unsupported_not_guessed():
    both = {"instances": [[1, 2.0, "a"]], "inputs": [[3, 4.0, "b"]]}
    assert parse_error(both) == "unsupported_format"


def test_instances_of_scalars_fill_a_single_feature():
    batch = parse({"instances": [1.5, 2.5, 3.5]}, features=("x",))
    assert batch.columns == {"x": [1.5, 2.5, 3.5]}
    assert batch.rows == 3


def test_instances_of_scalars_for_several_features_is_a_shape_mismatch():
    assert parse_error({"instances": [1.5, 2.5, 3.5]}) == "shape_mismatch"


def test_instances_as_columns():
    batch = parse({"instances": {"age": [1, 2], "city": ["a", "b"]}})
    assert batch.format == "kserve_v1"
    assert batch.columns == {"age": [1, 2], "income": [None, None], "city": ["a", "b"]}


def test_instances_that_are_neither_list_nor_columns_are_unsupported():
    assert parse_error({"instances": "abc"}) == "unsupported_format"
    assert parse_error({"instances": {"age": 1}}) == "unsupported_format"


# -- Open Inference Protocol v2 ------------------------------------------------------------


def tensor(name: str, shape: list[int], data: list[Any], datatype: str = "FP64") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def test_oip_one_tensor_per_feature():
    batch = parse(
        {
            "id": "r1",
            "inputs": [
                tensor("income", [2], [1.5, 2.5]),
                tensor("age", [2, 1], [[30], [40]], "INT64"),
                tensor("city", [2], ["Oslo", "Rome"], "BYTES"),
            ],
            "parameters": {"content_type": "pd"},
        }
    )
    assert batch.format == "oip_v2"
    assert batch.columns == {"age": [30, 40], "income": [1.5, 2.5], "city": ["Oslo", "Rome"]}
    assert batch.unknown_features == 0


def test_oip_unknown_tensors_are_counted_per_row():
    batch = parse({"inputs": [tensor("age", [2], [1, 2]), tensor("junk", [2], [0, 0])]})
    assert batch.columns["age"] == [1, 2]
    assert batch.columns["income"] == [None, None]
    assert batch.unknown_features == 2


def test_oip_single_matrix_tensor_with_flat_row_major_data():
    batch = parse({"inputs": [tensor("input-0", [2, 3], [1, 2.0, "a", 3, 4.0, "b"])]})
    assert batch.columns == {"age": [1, 3], "income": [2.0, 4.0], "city": ["a", "b"]}


def test_oip_single_matrix_tensor_with_nested_data():
    batch = parse({"inputs": [tensor("input-0", [2, 3], [[1, 2.0, "a"], [3, 4.0, "b"]])]})
    assert batch.columns == {"age": [1, 3], "income": [2.0, 4.0], "city": ["a", "b"]}


def test_oip_deeply_nested_data_follows_the_shape():
    batch = parse(
        {"inputs": [tensor("x", [2, 1], [[7], [8]])]},
        features=("x",),
    )
    assert batch.columns == {"x": [7, 8]}


def test_oip_data_length_not_matching_shape_is_a_shape_mismatch():
    assert parse_error({"inputs": [tensor("input-0", [2, 3], [1, 2, 3, 4, 5])]}) == (
        "shape_mismatch"
    )
    assert parse_error({"inputs": [tensor("age", [3], [1, 2])]}) == "shape_mismatch"


def test_oip_ragged_nested_data_is_a_shape_mismatch():
    ragged = tensor("input-0", [2, 3], [[1, 2], [3, 4, 5, 6]])
    assert parse_error({"inputs": [ragged]}) == "shape_mismatch"


def test_oip_feature_tensors_with_different_row_counts_are_a_shape_mismatch():
    inputs = [tensor("age", [2], [1, 2]), tensor("income", [3], [1.0, 2.0, 3.0])]
    assert parse_error({"inputs": inputs}) == "shape_mismatch"


def test_oip_matrix_of_the_wrong_width_is_a_shape_mismatch():
    assert parse_error({"inputs": [tensor("input-0", [1, 2], [1, 2])]}) == "shape_mismatch"


def test_oip_invalid_shape_is_a_shape_mismatch():
    assert parse_error({"inputs": [tensor("age", [-1], [1])]}) == "shape_mismatch"
    bad = {"name": "age", "shape": "2", "datatype": "FP32", "data": [1, 2]}
    assert parse_error({"inputs": [bad]}) == "shape_mismatch"


def test_oip_tensors_none_of_which_is_a_feature_are_no_known_features():
    inputs = [tensor("a", [1], [1]), tensor("b", [1], [2])]
    assert parse_error({"inputs": inputs}) == "no_known_features"


def test_oip_rows_beyond_max_rows_are_too_many_rows():
    assert parse_error({"inputs": [tensor("age", [11], [0] * 11)]}, max_rows=10) == (
        "too_many_rows"
    )


# -- MLflow serving ------------------------------------------------------------------------


def test_mlflow_dataframe_split_maps_columns_by_name():
    payload = {
        "dataframe_split": {
            "index": [10, 11],
            "columns": ["city", "extra", "age"],
            "data": [["a", 0, 1], ["b", 0, 2]],
        }
    }
    batch = parse(payload)
    assert batch.format == "mlflow_dataframe_split"
    assert batch.columns == {"age": [1, 2], "income": [None, None], "city": ["a", "b"]}
    assert batch.unknown_features == 2


def test_mlflow_dataframe_split_without_columns_is_positional():
    batch = parse({"dataframe_split": {"data": [[1, 2.0, "a"]]}})
    assert batch.columns == {"age": [1], "income": [2.0], "city": ["a"]}


def test_mlflow_dataframe_split_row_of_the_wrong_width_is_a_shape_mismatch():
    payload = {"dataframe_split": {"columns": ["age", "city"], "data": [[1, "a"], [2]]}}
    assert parse_error(payload) == "shape_mismatch"


def test_mlflow_dataframe_split_without_data_is_unsupported():
    assert parse_error({"dataframe_split": {"columns": ["age"]}}) == "unsupported_format"


def test_mlflow_dataframe_records():
    batch = parse({"dataframe_records": [{"age": 1, "city": "a"}, {"age": 2, "income": 9.5}]})
    assert batch.format == "mlflow_dataframe_records"
    assert batch.columns == {"age": [1, 2], "income": [None, 9.5], "city": ["a", None]}


def test_mlflow_dataframe_records_of_lists_is_unsupported():
    assert parse_error({"dataframe_records": [[1, 2, 3]]}) == "unsupported_format"


def test_mlflow_inputs_as_records():
    batch = parse({"inputs": [{"age": 1, "income": 2.0, "city": "a"}], "params": {"k": 1}})
    assert batch.format == "mlflow_inputs"
    assert batch.columns == {"age": [1], "income": [2.0], "city": ["a"]}


def test_mlflow_inputs_as_columns():
    batch = parse({"inputs": {"age": [1, 2], "income": [3.0, 4.0], "city": ["a", "b"]}})
    assert batch.format == "mlflow_inputs"
    assert batch.columns == {"age": [1, 2], "income": [3.0, 4.0], "city": ["a", "b"]}


def test_mlflow_inputs_as_positional_rows():
    batch = parse({"inputs": [[1, 2.0, "a"], [3, 4.0, "b"]]})
    assert batch.format == "mlflow_inputs"
    assert batch.columns == {"age": [1, 3], "income": [2.0, 4.0], "city": ["a", "b"]}


# -- CSV -----------------------------------------------------------------------------------


def test_csv_with_header_maps_by_name_and_keeps_strings():
    body = b"city,age,extra\r\nOslo,41,x\r\nRome,,y\r\n"
    batch = parse(body, "text/csv; charset=utf-8")
    assert batch.format == "csv"
    assert batch.columns == {"age": ["41", None], "income": [None, None], "city": ["Oslo", "Rome"]}
    assert batch.unknown_features == 2


def test_csv_without_header_is_positional():
    batch = parse(b"41,5200.5,7\n39,100,8\n", "application/csv")
    assert batch.columns == {"age": ["41", "39"], "income": ["5200.5", "100"], "city": ["7", "8"]}


def test_csv_quoted_fields_keep_commas_and_newlines():
    batch = parse(b'age,city\n1,"Oslo, Norway"\n2,"two\nlines"\n', "text/csv")
    assert batch.columns["city"] == ["Oslo, Norway", "two\nlines"]


def test_csv_with_utf8_bom_and_blank_lines():
    batch = parse(b"\xef\xbb\xbfage,city\n\n1,\xc3\xa5\n", "text/csv")
    assert batch.columns == {"age": ["1"], "income": [None], "city": ["\u00e5"]}


def test_csv_repeated_header_name_reads_the_first_column():
    batch = parse(b"age,age,city\n1,2,a\n", "text/csv")
    assert batch.columns == {"age": ["1"], "income": [None], "city": ["a"]}
    assert batch.unknown_features == 1


def test_csv_malformed_quoting_is_invalid_csv():
    assert parse_error(b'age,city\n1,"Oslo"x\n', "text/csv") == "invalid_csv"


def test_csv_row_of_the_wrong_width_is_a_shape_mismatch():
    assert parse_error(b"age,city\n1,a\n2\n", "text/csv") == "shape_mismatch"


def test_csv_header_without_known_names_is_no_known_features():
    assert parse_error(b"foo,bar\n1,2\n", "text/csv") == "no_known_features"


def test_csv_rows_are_bounded_with_and_without_header():
    assert parse(b"age\n" + b"1\n" * 10, "text/csv", max_rows=10).rows == 10
    assert parse_error(b"age\n" + b"1\n" * 11, "text/csv", max_rows=10) == "too_many_rows"
    assert parse_error(b"1,2,3\n" * 11, "text/csv", max_rows=10) == "too_many_rows"


# -- user extractor ------------------------------------------------------------------------


def test_extractor_returning_one_mapping_gives_one_row():
    batch = parse({"body": {"a": 1}}, extractor=lambda p: {"age": p["body"]["a"], "zzz": 0})
    assert batch.format == "extractor"
    assert batch.columns == {"age": [1], "income": [None], "city": [None]}
    assert batch.unknown_features == 1


def test_extractor_returning_a_sequence_of_mappings_gives_rows():
    batch = parse({"xs": [1, 2]}, extractor=lambda p: [{"age": x} for x in p["xs"]])
    assert batch.columns == {"age": [1, 2], "income": [None, None], "city": [None, None]}


def test_extractor_returning_columns_gives_rows():
    batch = parse({}, extractor=lambda p: {"age": np.array([1, 2]), "city": ("a", "b")})
    assert batch.columns == {"age": [1, 2], "income": [None, None], "city": ["a", "b"]}


def test_extractor_numpy_scalars_become_plain_values():
    batch = parse({}, extractor=lambda p: {"age": np.int64(3), "income": np.float32(0.5)})
    assert batch.columns["age"] == [3]
    assert type(batch.columns["age"][0]) is int
    assert batch.columns["income"] == [0.5]
    assert type(batch.columns["income"][0]) is float


def test_extractor_receives_raw_bytes_when_the_body_is_not_json():
    seen: list[Any] = []

    def extractor(payload: Any) -> dict:
        seen.append(payload)
        return {"age": len(payload)}

    batch = parse(b"\x00\x01\x02", "application/octet-stream", extractor=extractor)
    assert seen == [b"\x00\x01\x02"]
    assert batch.columns["age"] == [3]


def test_extractor_that_raises_is_an_extractor_error_chained_to_the_cause():
    def extractor(payload: Any) -> dict:
        raise KeyError("boom")

    body = b"{}"
    error = payload_error(lambda: parser(extractor=extractor).parse(body, None))
    assert error.reason == "extractor_error"
    assert isinstance(error.__cause__, KeyError)


@pytest.mark.parametrize(
    "returned",
    [None, 3, "age", b"x", [1, 2], [{"age": 1}, 5], {"age": [1, 2], "city": [1]}],
)
def test_extractor_returning_a_wrong_shape_is_an_extractor_error(returned):
    assert parse_error({}, extractor=lambda p: returned) == "extractor_error"


def test_extractor_returning_too_many_rows_is_too_many_rows():
    assert parse_error({}, extractor=lambda p: [{"age": 1}] * 11, max_rows=10) == "too_many_rows"


# -- content types and encodings -----------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/json", "Application/JSON; charset=UTF-8", "application/vnd.x+json"],
)
def test_json_content_types_are_read_as_json(content_type):
    assert parse({"age": 1}, content_type).columns["age"] == [1]


def test_text_plain_starting_like_json_is_read_as_json():
    assert parse(b'  {"age": 1}', "text/plain").columns["age"] == [1]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"age=1", "text/plain"),
        (b'{"age": 1}', "application/octet-stream"),
        (b"\x89PNG\r\n", "image/png"),
        (b"\x08\x01", "application/x-protobuf"),
    ],
)
def test_other_content_types_are_unsupported(body, content_type):
    assert parse_error(body, content_type) == "unsupported_content_type"


def test_utf8_bom_is_tolerated():
    assert parse(b'\xef\xbb\xbf{"city": "\xc3\xa5"}').columns["city"] == ["\u00e5"]


def test_invalid_utf8_is_not_utf8():
    assert parse_error(b'{"city": "\xff"}') == "not_utf8"


@pytest.mark.parametrize("body", [b"", b"   \r\n\t"])
def test_empty_body_is_empty_body(body):
    assert parse_error(body) == "empty_body"


# -- hostile input -------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{", b'{"age": 1,}', b"[1, 2", b"nope", b"{'age': 1}"])
def test_malformed_json_is_invalid_json(body):
    assert parse_error(body) == "invalid_json"


def test_pathological_nesting_is_too_deep():
    assert parse_error(b"[" * 100_000) == "too_deep"


def test_ten_thousand_unknown_names_are_counted_not_kept():
    payload = {f"junk_{i}": i for i in range(10_000)}
    payload["age"] = 5
    batch = parse(payload)
    assert batch.columns == {"age": [5], "income": [None], "city": [None]}
    assert batch.unknown_features == 10_000


def test_ten_thousand_unknown_names_and_no_known_one_is_no_known_features():
    assert parse_error({f"junk_{i}": i for i in range(10_000)}) == "no_known_features"


def test_records_without_any_known_feature_are_no_known_features():
    assert parse_error([{"x": 1}, {"y": 2}]) == "no_known_features"


def test_nan_and_infinity_tokens_are_kept_as_floats():
    batch = parse(b'{"age": NaN, "income": Infinity, "city": -Infinity}')
    assert math.isnan(batch.columns["age"][0])
    assert batch.columns["income"] == [math.inf]
    assert batch.columns["city"] == [-math.inf]


def test_five_megabytes_of_rows_beyond_max_rows_is_too_many_rows():
    body = b"[" + b",".join([b"[1.25,2.5,3.75]"] * 350_000) + b"]"
    assert len(body) > 5_000_000
    assert parse_error(body) == "too_many_rows"


def test_exactly_max_rows_is_accepted():
    assert parse([[1, 2, 3]] * 10, max_rows=10).rows == 10
    assert parse_error([[1, 2, 3]] * 11, max_rows=10) == "too_many_rows"


def test_error_detail_is_bounded():
    error = payload_error(lambda: parser().parse(b'{"age": 1' + b" " * 10_000 + b"x", None))
    assert len(str(error)) < 300


@pytest.mark.parametrize(
    ("body", "content_type", "rows", "fmt"),
    [
        (b'{"a": 1, "b": 2}', None, 1, "object"),
        (b'{"a": [1, 2, 3], "b": [4, 5, 6]}', None, 3, "object"),
        (b'{"instances": [{"a": 1}, {"a": 2}, {"a": 3}]}', None, 3, "kserve_v1"),
        (b'{"instances": [[1, 2], [3, 4]]}', None, 2, "kserve_v1"),
        (
            b'{"inputs": [{"name": "x", "shape": [4, 3], "datatype": "FP32", "data": '
            b"[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}]}",
            None,
            4,
            "oip_v2",
        ),
        (
            b'{"dataframe_split": {"columns": ["a"], "data": [[1], [2]]}}',
            None,
            2,
            "mlflow_dataframe_split",
        ),
        (b"a,b\n1,2\n3,4\n", "text/csv", 2, "csv"),
        (b'[{"a": 1}, {"b": 2}]', None, 2, "records"),
    ],
)
def test_without_features_the_parser_counts_rows_only(body, content_type, rows, fmt):
    batch = PayloadParser(features=()).parse(body, content_type)
    assert (batch.rows, batch.format, batch.columns, batch.unknown_features) == (rows, fmt, {}, 0)


def test_without_features_bad_payloads_still_fail_with_their_reason():
    parser = PayloadParser(features=())
    with pytest.raises(PayloadError) as err:
        parser.parse(b'{"a": 1,,', "application/json")
    assert err.value.reason == "invalid_json"
