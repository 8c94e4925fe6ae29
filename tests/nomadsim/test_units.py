"""In-process tests of nomadsim's Go-compatibility helpers, filters, policies and flags."""

from __future__ import annotations

import pytest

from dispatchq.nomadsim.__main__ import build_parser, config_from_args
from dispatchq.nomadsim.acl import AclStore, PolicyError, Token, parse_rules
from dispatchq.nomadsim.dispatch import DISPATCH_REQUEST
from dispatchq.nomadsim.faults import FaultRule, Faults
from dispatchq.nomadsim.filterexpr import FilterError, compile_filter
from dispatchq.nomadsim.godecode import (
    STRING_MAP,
    decode_body,
    decode_body_go,
    go_b64decode,
    struct,
)
from dispatchq.nomadsim.goscan import DecodeError
from dispatchq.nomadsim.jsonshape import (
    go_list,
    go_quote,
    multierror,
    parse_go_duration,
    rfc3339,
)


@pytest.mark.parametrize(
    ("text", "quoted"),
    [("video", '"video"'), ('a"b', '"a\\"b"'), ("tab\there", '"tab\\there"'),
     ("\x01", '"\\x01"'), ("caf\u00e9", '"caf\u00e9"')],
)
def test_go_quote(text: str, quoted: str) -> None:
    assert go_quote(text) == quoted


def test_go_list_and_multierror() -> None:
    assert go_list(["a", "b"]) == "[a b]"
    assert multierror(["x"]) == "1 error occurred:\n\t* x\n\n"
    assert multierror(["x", "y"]) == "2 errors occurred:\n\t* x\n\t* y\n\n"


@pytest.mark.parametrize(
    ("text", "ns"),
    [("5s", 5_000_000_000), ("300ms", 300_000_000), ("1m30s", 90_000_000_000),
     ("1.5h", 5_400_000_000_000), ("0", 0), ("-2s", -2_000_000_000), ("10\u00b5s", 10_000)],
)
def test_parse_go_duration(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize("text", ["", "5", "s", "5x", "1.s.", "--1s"])
def test_parse_go_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="time: "):
        parse_go_duration(text)


def test_times() -> None:
    assert rfc3339(0) == "0001-01-01T00:00:00Z"
    assert rfc3339(1_485_379_325_500_000_000) == "2017-01-25T21:22:05.5Z"
    assert rfc3339(1_485_379_325_000_000_000) == "2017-01-25T21:22:05Z"
    assert rfc3339(1_485_379_325_000_000_001) == "2017-01-25T21:22:05.000000001Z"
    assert rfc3339(1_485_379_326_123_456_780) == "2017-01-25T21:22:06.12345678Z"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("aGVsbG8", "illegal base64 data at input byte 4"),
        ("aGVsbA=", "illegal base64 data at input byte 7"),
        ("a", "illegal base64 data at input byte 0"),
        ("aGV!", "illegal base64 data at input byte 3"),
        ("aGVsbG8=x", "illegal base64 data at input byte 8"),
        ("=", "illegal base64 data at input byte 0"),
    ],
)
def test_go_base64_errors(text: str, message: str) -> None:
    with pytest.raises(DecodeError, match=f"^{message}$"):
        go_b64decode(text)


def test_go_base64_accepts_newlines() -> None:
    assert go_b64decode("aGVs\r\nbG8=") == b"hello"
    assert go_b64decode("") == b""


WIRE = struct("structs.Wire", Name=STRING_MAP)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{\"a\" 1}", "invalid character '1' after object key"),
        (b"{\"a\":1 \"b\"}", "invalid character '\"' after object key:value pair"),
        (b"[1 2]", "invalid character '2' after array element"),
        (b"{1}", "invalid character '1' looking for beginning of object key string"),
        (b"tru", "unexpected EOF"),
        (b"trux", "invalid character 'x' in literal true (expecting 'e')"),
        (b"nul", "unexpected EOF"),
        (b"\"a\\qb\"", "invalid character 'q' in string escape code"),
        (b"\"a\nb\"", "invalid character '\\n' in string literal"),
        (b"-x", "invalid character 'x' in numeric literal"),
        (b"1.x", "invalid character 'x' after decimal point in numeric literal"),
        (b"1ex", "invalid character 'x' in exponent of numeric literal"),
        (b"NaN", "invalid character 'N' looking for beginning of value"),
        (b"'a'", "invalid character '\\'' looking for beginning of value"),
    ],
)
def test_go_syntax_errors(body: bytes, message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_body(body, WIRE)
    assert str(caught.value) == message


def test_go_struct_decoding() -> None:
    assert decode_body(b'{"name":{"a":"b","c":null},"other":1}', WIRE) == {
        "Name": {"a": "b", "c": ""}}
    with pytest.raises(DecodeError, match="Go struct field Wire.Name of type string$"):
        decode_body(b'{"Name":{"a":true}}', WIRE)
    with pytest.raises(DecodeError, match="Go value of type structs.Wire$"):
        decode_body(b'"x"', WIRE)
    # Go's Decoder ends a top-level number at the first non-number byte
    with pytest.raises(DecodeError, match="^json: cannot unmarshal number into Go value"):
        decode_body(b"1x", WIRE)
    assert decode_body(b' \n{"Name":null} trailing', WIRE) == {"Name": None}


@pytest.mark.parametrize(
    "body",
    [
        b'{"JobID":"j","Payload":"aGVsbG8=","Meta":{"k":"v"},"Priority":0}',
        b'{"JobID":"j","Payload":"aGVsbG8","Priority":-3}',
        b'{"Payload":"aGVs\\nbG8=","Meta":{"k":null},"Priority":1.0}',
        b'{"jobid":"a","JobID":"b","Priority":9223372036854775808}',
        b'{"JobID":"j","Unknown":[1],"Meta":{}} {"JobID":"x"}',
        b'{"JobID":"\\ud800","Payload":null,"Priority":true}',
        b'{"JobID":"\xff"}',
    ],
)
def test_fast_decoding_agrees_with_go_path(body: bytes) -> None:
    """The orjson shortcut answers what the Go-faithful decoder answers, or defers."""
    try:
        expected: object = decode_body_go(body, DISPATCH_REQUEST)
    except DecodeError as exc:
        expected = str(exc)
    try:
        got: object = decode_body(body, DISPATCH_REQUEST)
    except DecodeError as exc:
        got = str(exc)
    assert got == expected


def test_filter_compile_errors() -> None:
    fields = {"ID", "Meta"}
    for text in ("", "ID ==", "Nope == 1", "ID is maybe", "(ID == 1", 'ID matches "["'):
        with pytest.raises(FilterError):
            compile_filter(text, fields)
    predicate = compile_filter('ID != "a" and not Meta is empty', fields)
    assert predicate({"ID": "b", "Meta": {"k": "v"}})
    assert not predicate({"ID": "a", "Meta": {"k": "v"}})
    assert not predicate({"ID": "b", "Meta": None})


def test_policy_rules() -> None:
    rules = parse_rules(
        """
        /* block comment */
        namespace "default" { policy = "read" }
        namespace "team-*" {
          policy       = "read"
          capabilities = ["dispatch-job"]   // extra
        }
        node { policy = "read" }
        """
    )
    assert "read-job" in rules["default"] and "dispatch-job" not in rules["default"]
    assert {"dispatch-job", "list-jobs"} <= rules["team-*"]
    for bad in ('namespace "x" { policy = "admin" }', 'namespace "x" {', "namespace = ["):
        with pytest.raises(PolicyError):
            parse_rules(bad)


def test_policy_matching_prefers_exact_then_closest_glob() -> None:
    acl = AclStore(enabled=True)
    acl.policies["p"] = {"_caps": parse_rules(
        'namespace "*" { policy = "write" }\n'
        'namespace "prod-*" { policy = "read" }\n'
        'namespace "prod-eu" { capabilities = ["dispatch-job"] }\n')}
    acl.tokens["s"] = Token("a", "s", "n", "client", ["p"], 1)
    authz = acl.resolve("s")
    assert authz is not None
    assert authz.allows("dev", "dispatch-job")
    assert not authz.allows("prod-us", "dispatch-job") and authz.allows("prod-us", "read-job")
    assert authz.allows("prod-eu", "dispatch-job") and not authz.allows("prod-eu", "read-job")
    assert acl.resolve("unknown") is None
    assert acl.resolve("") is not None


def test_fault_flags_and_counts() -> None:
    rule = FaultRule.from_flag("error:dispatch:1:2")
    assert (rule.kind, rule.route, rule.probability, rule.count) == ("error", "dispatch", 1.0, 2)
    faults = Faults(0, [rule])
    decisions = [faults.decide("dispatch", "POST").action for _ in range(3)]
    assert [d is not None for d in decisions] == [True, True, False]
    assert faults.decide("jobs", "GET").action is None
    slow = FaultRule.from_flag('{"kind": "slow", "delay_ms": 30}')
    assert Faults(10, [slow]).decide("jobs", "GET").delay == pytest.approx(0.04)


def test_cli_flags() -> None:
    config = config_from_args(["--port", "1", "--run-time", "2s", "--schedule-delay", "0.5",
                               "--nodes", "4", "--acl", "--fault", "cut:evaluation",
                               "--heartbeat", "250ms", "--region", "eu"])
    assert (config.port, config.run_time, config.schedule_delay, config.nodes) == (1, 2.0, 0.5, 4)
    assert (config.acl, config.heartbeat, config.region) == (True, 0.25, "eu")
    assert config.faults[0]["kind"] == "cut"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--fault", "explode"])
