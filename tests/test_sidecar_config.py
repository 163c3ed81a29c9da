"""The sidecar's configuration: YAML plus environment overrides, every problem named by key."""

from __future__ import annotations

import ast
import dataclasses
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlwarden.middleware.errors import ConfigError
from mlwarden.sidecar.config import (
    AdminConfig,
    BreakerConfig,
    RetryConfig,
    SidecarConfig,
    TimeoutsConfig,
    load_config,
)
from mlwarden.sidecar.healing.vocabulary import SIGNALS, function_specs
from mlwarden.sidecar.settings import load_sidecar_config, sidecar_config_from_mapping

EXAMPLES = Path(__file__).resolve().parent.parent / "deploy" / "examples"
FULL = EXAMPLES / "sidecar-full.yaml"
TWO = {"primary": "http://127.0.0.1:8001", "stable": "http://127.0.0.1:8002"}
TOKEN = "s3cret-token-0123456789"


def config(*, environ: dict[str, str] | None = None, **blocks: Any) -> SidecarConfig:
    data = {"upstreams": dict(TWO), **blocks}
    return SidecarConfig.from_mapping(data, environ=environ or {})


def problems(
    data: Any = None, *, environ: dict[str, str] | None = None, **blocks: Any
) -> list[str]:
    if data is None:
        data = {"upstreams": dict(TWO), **blocks}
    with pytest.raises(ConfigError) as info:
        SidecarConfig.from_mapping(data, environ=environ or {})
    return list(info.value.problems)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- loading


def test_two_urls_are_a_complete_config_with_every_default() -> None:
    cfg = load_config(EXAMPLES / "sidecar-minimal.yaml", environ={})
    assert [(u.name, u.url) for u in cfg.upstreams] == list(TWO.items())
    assert cfg.upstream("stable").health_path == "/-/health"
    assert cfg.upstream("stable").max_connections == 100
    assert cfg.upstream("stable").connect_timeout_s == 1.0
    assert (cfg.routing.primary, cfg.routing.fallbacks) == ("primary", ("stable",))
    assert (cfg.listen.host, cfg.listen.port) == ("0.0.0.0", 8080)
    assert (cfg.admin.port, cfg.admin.token, cfg.admin.mutations_enabled) == (9901, "", False)
    assert cfg.timeouts == TimeoutsConfig(per_try_timeout_s=10.0, total_timeout_s=30.0)
    assert cfg.retry == RetryConfig()
    assert cfg.retry.num_retries == 2
    assert cfg.retry.retry_on == ("connect-failure", "reset", "gateway-error")
    assert "POST" in cfg.retry.retriable_methods
    assert (cfg.retry.base_interval_s, cfg.retry.max_interval_s) == (0.025, 0.25)
    assert cfg.retry.budget_percent == 20.0
    assert cfg.breaker == BreakerConfig()
    assert cfg.breaker.failure_status_codes == (500, 502, 503, 504)
    assert cfg.breaker.redis_url is None
    assert (cfg.health_checks.interval_s, cfg.health_checks.timeout_s) == (5.0, 1.0)
    assert cfg.health_checks.read_health_report is True
    assert cfg.limits.max_request_bytes == 16 * 2**20
    assert cfg.degraded_response is None


def test_full_example_file_loads_with_its_values() -> None:
    cfg = load_config(EXAMPLES / "sidecar-full.yaml", environ={})
    assert cfg.routing.order == ("v2", "v1")
    assert cfg.upstream("v1").url == "http://127.0.0.1:8002"
    assert cfg.degraded_response is not None
    assert cfg.degraded_response.status == 503


def _full_example() -> tuple[dict[str, Any], SidecarConfig]:
    written = yaml.safe_load(FULL.read_text(encoding="utf-8"))
    return written, load_sidecar_config(FULL, environ={})


def _written_blocks() -> Iterator[tuple[str, dict[str, Any], Any, set[str]]]:
    """(key path, the mapping the example writes, the block loaded from it, keys that are not
    settings) of every block of the configuration."""
    written, cfg = _full_example()
    for f in dataclasses.fields(SidecarConfig):
        if f.name not in ("upstreams", "policies"):
            yield f.name, written[f.name], getattr(cfg, f.name), set()
    yield "healing.escalation", written["healing"]["escalation"], cfg.healing.escalation, set()
    yield "upstreams.v2", written["upstreams"]["v2"], cfg.upstream("v2"), {"name"}
    yield "policies[0]", written["policies"][0], cfg.policies[0], {"condition"}


def test_the_full_example_writes_out_every_key_of_every_block() -> None:
    # The full example documents every setting: a new key must appear there too.
    written, _ = _full_example()
    assert set(written) == {f.name for f in dataclasses.fields(SidecarConfig)}
    for path, block, loaded, not_keys in _written_blocks():
        keys = {f.name for f in dataclasses.fields(loaded)} - not_keys
        assert set(block) == keys, f"{path}: missing {keys - set(block)}, extra {set(block) - keys}"


#: Keys with a default that the full example sets to show how they are written.
EXAMPLE_VALUES = {"policies[0].actions"}  # default: none, the policy only records


def test_every_value_of_the_full_example_is_the_default() -> None:
    # Keys without a default (URLs, the canary's candidate, ...) carry an example instead.
    written, cfg = _full_example()
    for path, block, loaded, _ in _written_blocks():
        if path == "routing":
            continue  # its defaults derive from the upstreams: below
        for f in dataclasses.fields(loaded):
            if f.default is dataclasses.MISSING or f"{path}.{f.name}" in EXAMPLE_VALUES:
                continue
            # As the block reads it (lists become tuples, 5 becomes 5.0); a loaded value may be
            # derived (canary.stable: the primary).
            check = f.metadata.get("check")
            value = check(block[f.name]) if check else getattr(loaded, f.name)
            assert value == f.default, f"{path}.{f.name}: {value!r} is not the default"
    # routing's defaults derive from the upstreams
    derived = sidecar_config_from_mapping(
        {k: v for k, v in written.items() if k != "routing"}, environ={}
    )
    assert cfg.routing == derived.routing


def test_every_key_of_the_full_example_says_what_it_does() -> None:
    for number, line in enumerate(FULL.read_text(encoding="utf-8").splitlines(), 1):
        if re.match(r"\s*-?\s*[a-z0-9_]+:", line):
            assert "#" in line, f"sidecar-full.yaml line {number} has no comment: {line!r}"


def test_the_full_example_names_every_signal_and_function_of_the_policies() -> None:
    text = FULL.read_text(encoding="utf-8")
    for name in [*SIGNALS, *function_specs(["v1"])]:
        assert re.search(rf"\b{name}\b", text), f"{name} is not in sidecar-full.yaml"


def test_routing_primary_alone_makes_the_others_its_fallbacks_in_order() -> None:
    cfg = SidecarConfig.from_mapping(
        {
            "upstreams": {"a": "http://a:1", "b": "http://b:1", "c": "http://c:1"},
            "routing": {"primary": "b"},
        },
        environ={},
    )
    assert cfg.routing.order == ("b", "a", "c")


def test_lists_become_tuples_and_methods_upper_case() -> None:
    cfg = config(
        retry={
            "retriable_methods": ["get", "post"],
            "retry_on": ["5xx", "retriable-status-codes"],
            "retriable_status_codes": [429, 409, 429],
        }
    )
    assert cfg.retry.retriable_methods == ("GET", "POST")
    assert cfg.retry.retriable_status_codes == (409, 429)


def test_config_objects_are_frozen() -> None:
    cfg = config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.retry.num_retries = 5  # type: ignore[misc]


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"retry\.num_retries: expected a whole number"):
        RetryConfig(num_retries=-1)


# --------------------------------------------------------------------------- bad input


def test_unknown_key_is_named_with_a_suggestion() -> None:
    assert problems(retry={"num_retires": 3}) == [
        "retry.num_retires: unknown key (did you mean 'num_retries'? allowed: num_retries, "
        "retry_on, retriable_status_codes, retriable_methods, base_interval_s, max_interval_s, "
        "backoff_multiplier, budget_percent, min_retries_per_s)"
    ]


def test_unknown_top_level_key_is_named_with_a_suggestion() -> None:
    [p] = problems(retires={})
    assert p.startswith("retires: unknown key (did you mean 'retry'?")


def test_another_tools_word_suggests_ours() -> None:
    [p] = problems(breaker={"fail_max": 3})
    assert p.startswith("breaker.fail_max: unknown key (did you mean 'consecutive_5xx'?")


def test_wrong_type_is_named_with_the_value() -> None:
    assert problems(retry={"num_retries": "three"}) == [
        "retry.num_retries: expected a whole number >= 0 and <= 10, got 'three'"
    ]


def test_a_boolean_is_not_a_number() -> None:
    [p] = problems(limits={"max_concurrent_requests": True})
    assert p.startswith("limits.max_concurrent_requests: expected a whole number")


def test_block_that_is_not_a_mapping_is_named() -> None:
    assert problems(retry=3) == ["retry: expected a mapping, got int 3"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://x", "expected an http(s) URL with a host, got 'ftp://x'"),
        ("http://", "expected an http(s) URL with a host, got 'http://'"),
        ("127.0.0.1:8001", "expected an http(s) URL with a host, got '127.0.0.1:8001'"),
        ("http://u:pw@h:1", "must not contain credentials (user:password@)"),
    ],
)
def test_bad_upstream_url_is_named(url: str, why: str) -> None:
    data = {"upstreams": {"v1": "http://127.0.0.1:8001", "v2": url}}
    assert problems(data) == [f"upstreams.v2.url: {why}"]


def test_upstream_mapping_without_url_is_named() -> None:
    data = {"upstreams": {"v1": "http://a:1", "v2": {"max_connections": 5}}}
    assert problems(data) == ["upstreams.v2.url: required"]


@pytest.mark.parametrize("value", [0, -1, 0.0])
def test_zero_or_negative_duration_is_rejected(value: float) -> None:
    assert problems(timeouts={"total_timeout_s": value}) == [
        f"timeouts.total_timeout_s: expected a number of seconds > 0 and <= 3600, got {value!r}"
    ]


def test_per_try_timeout_above_total_is_rejected() -> None:
    assert problems(timeouts={"per_try_timeout_s": 40, "total_timeout_s": 30}) == [
        "timeouts.per_try_timeout_s: must be <= timeouts.total_timeout_s (30), got 40"
    ]


def test_max_interval_below_base_interval_is_rejected() -> None:
    assert problems(retry={"base_interval_s": 1, "max_interval_s": 0.5}) == [
        "retry.max_interval_s: must be >= retry.base_interval_s (1), got 0.5"
    ]


def test_health_check_timeout_must_be_below_interval() -> None:
    assert problems(health_checks={"interval_s": 2, "timeout_s": 2}) == [
        "health_checks.timeout_s: must be < health_checks.interval_s (2), got 2"
    ]


def test_unknown_retry_on_word_is_named_with_a_suggestion() -> None:
    [p] = problems(retry={"retry_on": ["5xx", "connect-failures"]})
    assert p.startswith(
        "retry.retry_on: unknown 'connect-failures' (did you mean "
        "'connect-failure'?); allowed: 5xx, connect-failure,"
    )


def test_status_code_out_of_range_is_named() -> None:
    assert problems(breaker={"failure_status_codes": [503, 600, 99]}) == [
        "breaker.failure_status_codes: expected status codes 100-599, got 600, 99"
    ]


def test_retriable_status_codes_need_the_retry_on_word() -> None:
    [p] = problems(retry={"retriable_status_codes": [429]})
    assert p.startswith("retry.retriable_status_codes: is ignored unless retry_on has")


def test_budget_percent_above_100_is_rejected() -> None:
    assert problems(retry={"budget_percent": 150}) == [
        "retry.budget_percent: expected a number >= 0 and <= 100, got 150"
    ]


def test_unknown_upstream_in_routing_is_named() -> None:
    assert problems(routing={"primary": "v3", "fallbacks": ["stable", "v4"]}) == [
        "routing.primary: unknown upstream 'v3' (known: primary, stable)",
        "routing.fallbacks[1]: unknown upstream 'v4' (known: primary, stable)",
    ]


def test_primary_among_its_own_fallbacks_is_rejected() -> None:
    assert problems(routing={"primary": "stable", "fallbacks": ["stable", "primary"]}) == [
        "routing.fallbacks: must not contain the primary 'stable': an upstream cannot be its "
        "own fallback"
    ]


def test_a_bad_upstream_is_not_reported_again_as_unknown_in_routing() -> None:
    data = {"upstreams": {"v1": "http://a:1", "v2": "ftp://x"}, "routing": {"primary": "v2"}}
    assert problems(data) == [
        "upstreams.v2.url: expected an http(s) URL with a host, got 'ftp://x'"
    ]


@pytest.mark.parametrize("upstreams", [None, {}, ["http://a:1"]])
def test_missing_or_empty_upstreams_are_rejected(upstreams: Any) -> None:
    [p] = problems({"upstreams": upstreams})
    assert p.startswith("upstreams: expected a mapping of at least one name to a URL")


def test_upstream_name_unfit_for_labels_is_rejected() -> None:
    [p] = problems({"upstreams": {"v 1": "http://a:1"}})
    assert p.startswith("upstreams.v 1: the name must be 1-63 letters")


def test_same_port_for_proxy_and_admin_is_rejected() -> None:
    assert problems(listen={"port": 9000}, admin={"port": 9000}) == [
        "admin.port: must differ from listen.port, both are 9000"
    ]


def test_degraded_json_body_must_be_json() -> None:
    [p] = problems(degraded_response={"body": "{oops"})
    assert p.startswith(
        "degraded_response.body: must be valid JSON for content_type 'application/json'"
    )


def test_degraded_response_with_static_body_loads() -> None:
    cfg = config(degraded_response={"status": 200, "content_type": "text/plain", "body": "later"})
    assert cfg.degraded_response is not None
    assert (cfg.degraded_response.status, cfg.degraded_response.body) == (200, "later")


def test_non_mapping_top_level_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "- http://a:1\n- http://b:1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.source == str(path)
    assert info.value.problems == (
        "top level: expected a mapping with 'upstreams', got list ['http://a:1', 'http://b:1']",
    )


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="got an empty document"):
        load_config(write(tmp_path, ""), environ={})


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        upstreams:
          v1: http://a:1
          v2: [http://b:1
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    [p] = info.value.problems
    assert p.startswith("YAML syntax: line 4, column 1:")
    assert str(path) in str(info.value)


def test_duplicate_key_in_yaml_is_rejected_with_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        upstreams:
          v1: http://a:1
          v1: http://b:1
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == (
        "YAML syntax: line 3, column 3: duplicate key 'v1' (first at line 2)",
    )


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.yaml", environ={})


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        upstreams:
          v1: http://127.0.0.1:8001
          v2: ftp://x
        routing: {primary: v1, fallbacks: [v2, v9]}
        retry: {num_retries: -1, retry_on: [sometimes]}
        timeouts: {per_try_timeout_s: 0}
        breaker: {fail_max: 3}
        listen: {port: 70000}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    keys = [p.split(":")[0] for p in info.value.problems]
    assert keys == [
        "upstreams.v2.url",
        "listen.port",
        "timeouts.per_try_timeout_s",
        "retry.num_retries",
        "retry.retry_on",
        "breaker.fail_max",
        "routing.fallbacks[1]",
    ]
    assert str(info.value).startswith(f"invalid configuration {path}:\n  - upstreams.v2.url")


# --------------------------------------------------------------------------- environment


def test_env_override_sets_a_nested_key_as_a_yaml_value(tmp_path: Path) -> None:
    cfg = load_config(
        EXAMPLES / "sidecar-minimal.yaml",
        environ={
            "MLWARDEN__RETRY__NUM_RETRIES": "3",
            "MLWARDEN__RETRY__RETRY_ON": "[5xx, reset]",
            "MLWARDEN__HEALTH_CHECKS__READ_HEALTH_REPORT": "false",
            "MLWARDEN__UPSTREAMS__STABLE__URL": "http://10.0.0.7:80",
            "MLWARDEN__UPSTREAMS__PRIMARY__MAX_CONNECTIONS": "8",
        },
    )
    assert cfg.retry.num_retries == 3
    assert cfg.retry.retry_on == ("5xx", "reset")
    assert cfg.health_checks.read_health_report is False
    assert cfg.upstream("stable").url == "http://10.0.0.7:80"
    assert cfg.upstream("primary").max_connections == 8
    assert cfg.upstream("primary").url == TWO["primary"]


def test_env_override_can_add_an_upstream() -> None:
    cfg = config(environ={"MLWARDEN__UPSTREAMS__CANARY": "http://127.0.0.1:8003"})
    assert cfg.routing.order == ("primary", "stable", "canary")


def test_bad_env_value_is_named_by_its_variable() -> None:
    assert problems(environ={"MLWARDEN__RETRY__NUM_RETRIES": "-2"}) == [
        "retry.num_retries: expected a whole number >= 0 and <= 10, got -2 "
        "(from MLWARDEN__RETRY__NUM_RETRIES)"
    ]


def test_unknown_key_from_env_is_named_by_its_variable() -> None:
    [p] = problems(environ={"MLWARDEN__RETRY__NUM_RETRYS": "3"})
    assert p.startswith("retry.num_retrys: unknown key (did you mean 'num_retries'?")
    assert p.endswith("(from MLWARDEN__RETRY__NUM_RETRYS)")


def test_env_value_that_is_not_yaml_is_named_by_its_variable() -> None:
    [p] = problems(environ={"MLWARDEN__RETRY__RETRY_ON": "[5xx"})
    assert p.startswith("MLWARDEN__RETRY__RETRY_ON: not a YAML value (")


def test_env_path_through_a_scalar_is_named_by_its_variable() -> None:
    assert problems(retry={"num_retries": 1}, environ={"MLWARDEN__RETRY__NUM_RETRIES__X": "1"}) == [
        "MLWARDEN__RETRY__NUM_RETRIES__X: cannot set a key inside retry.num_retries, "
        "which is int 1, not a mapping"
    ]


def test_env_text_values_stay_verbatim() -> None:
    cfg = config(environ={"MLWARDEN__ADMIN__TOKEN": "0000000000000000123"})
    assert cfg.admin.token == "0000000000000000123"


def test_admin_token_comes_from_its_variable_when_absent() -> None:
    cfg = config(environ={"MLWARDEN_ADMIN_TOKEN": TOKEN})
    assert cfg.admin.token == TOKEN
    assert cfg.admin.mutations_enabled


def test_admin_token_in_the_file_wins_over_its_variable() -> None:
    cfg = config(admin={"token": TOKEN}, environ={"MLWARDEN_ADMIN_TOKEN": "x" * 20})
    assert cfg.admin.token == TOKEN


def test_short_admin_token_is_rejected_without_echoing_it() -> None:
    [p] = problems(environ={"MLWARDEN_ADMIN_TOKEN": "hunter2"})
    assert p.startswith("admin.token: expected a string of at least 16 characters")
    assert p.endswith("(value hidden) (from MLWARDEN_ADMIN_TOKEN)")
    assert "hunter2" not in p


def test_secrets_stay_out_of_repr() -> None:
    cfg = config(admin={"token": TOKEN}, breaker={"redis_url": "redis://:redispw@redis:6379/0"})
    for text in (repr(cfg), repr(cfg.admin), str(cfg)):
        assert TOKEN not in text
        assert "redispw" not in text
    assert "token=<set>" in repr(cfg.admin)
    assert repr(AdminConfig()) == "AdminConfig(host='127.0.0.1', port=9901, token=<unset>)"


def test_retry_on_takes_envoys_comma_separated_spelling() -> None:
    cfg = config(environ={"MLWARDEN__RETRY__RETRY_ON": "5xx, reset"})
    assert cfg.retry.retry_on == ("5xx", "reset")


def test_huge_value_is_rejected_and_quoted_short() -> None:
    [p] = problems(limits={"max_request_bytes": 10**400})
    assert p.startswith(
        "limits.max_request_bytes: expected a whole number >= 1 and <= 1_099_511_627_776, got 1000"
    )
    assert p.endswith("...")
    assert len(p) < 200


# --------------------------------------------------------------------------- policies


def test_policy_problems_are_listed_with_every_other_problem_of_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        upstreams:
          v1: http://127.0.0.1:8001
          v2: http://127.0.0.1:8002
        retry: {num_retries: -1}
        policies:
          - when: error_rate >
            actions: [route_to_fallback]
          - name: slow
            when: p99_latency_seconds > 1
            actions: [route_to_fallbak]
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_sidecar_config(path, environ={})
    keys = [p.split(":")[0] for p in info.value.problems]
    assert keys == [
        "retry.num_retries",
        "policies[0].name",
        "policies[0].when",
        "policies.slow.actions[0]",
    ]
    assert "did you mean 'route_to_fallback'?" in info.value.problems[-1]
    assert str(info.value).startswith(f"invalid configuration {path}:\n  - retry.num_retries")


def test_policies_are_parsed_with_the_files_defaults() -> None:
    cfg = sidecar_config_from_mapping(
        {"upstreams": dict(TWO), "policies": [{"name": "p", "when": "error_rate > 0.5"}]},
        environ={},
    )
    [policy] = cfg.policies
    assert (policy.severity, policy.for_s, policy.cooldown_s, policy.window_s) == (
        "warning",
        0.0,
        300.0,
        60.0,
    )
    assert (policy.actions, policy.target, policy.restore_after_s) == ((), None, None)


def test_without_the_healing_layer_policies_stay_as_written_once_their_list_is_checked() -> None:
    entry = {"name": "p", "when": "error_rate > 0.5"}
    assert config(policies=[entry]).policies == (entry,)
    assert problems(policies={"name": "p"}) == [
        "policies: expected a list of policies, got {'name': 'p'}"
    ]


def test_the_configuration_package_imports_nothing_from_the_healing_layer() -> None:
    # Type-only imports included: the layers point one way (healing -> config).
    package = Path(__file__).resolve().parent.parent / "sidecar" / "config"
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                assert not name.startswith("mlwarden.sidecar.healing"), f"{module.name}: {name}"
                assert name.startswith(("mlwarden.middleware", "mlwarden.sidecar.config")) or (
                    not name.startswith("mlwarden")
                ), f"{module.name} imports {name}"
