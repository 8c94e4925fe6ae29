"""The one-key-space rule of `dispatchq.store.keys`: no ID can name another object's key.

Whatever an ID holds (':' and the words other keys end in included), two different objects,
or two kinds of object, never share a key.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from dispatchq.core.request import NAMESPACE_PATTERN, TENANT_PATTERN
from dispatchq.store import keys

# IDs built from the pieces that other keys are made of, so that a collision, if a key
# builder allowed one, is within reach of a few draws.
_PIECES = ["", ":", "~", "~2", "-", "partial", "requests", "items", "attempts", "errors",
           "refresh", "batch", "request", "lane", "s", "dispatchq", "x", "\u00e9", " "]  # fmt: skip
ids = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=6).map("".join).filter(bool)
names = st.from_regex(TENANT_PATTERN, fullmatch=True)
namespaces = st.from_regex(NAMESPACE_PATTERN, fullmatch=True)

ONE_ID: dict[str, Callable[[str], str]] = {
    "request": keys.request,
    "partial": keys.partial,
    "progress": keys.progress,
    "blob": keys.blob,
    "batch": keys.batch,
    "batch-requests": keys.batch_requests,
    "batch-items": keys.batch_items,
    "batch-attempts": keys.batch_attempts,
    "batch-errors": keys.batch_errors,
    "lane": keys.lane,
    "lanes": keys.lanes,
    "backlog": keys.backlog,
    "tenants": keys.tenants,
    "credit": keys.credit,
    "lease": keys.lease,
    "result": keys.celery_result,
}
TWO_NAMES: dict[str, Callable[[str, str], str]] = {
    "children": keys.children,
    "children-refresh": keys.children_refresh,
    "tenant": lambda tenant, queue: keys.tenant_ring(queue, tenant),
    "inflight": keys.inflight,
}


def test_no_prefix_is_the_start_of_another_or_of_a_fixed_key() -> None:
    for (a, pa), (b, pb) in itertools.permutations(keys.PREFIXES.items(), 2):
        assert not pa.startswith(pb), (a, b)
    for fixed in keys.FIXED:
        assert not any(fixed.startswith(p) for p in keys.PREFIXES.values()), fixed
    assert set(keys.PREFIXES) == set(ONE_ID) | set(TWO_NAMES)


@given(kind=st.sampled_from(sorted(ONE_ID)), some_id=ids)
def test_a_key_is_its_kind_prefix_then_the_id_and_nothing_after(kind: str, some_id: str) -> None:
    assert ONE_ID[kind](some_id) == keys.PREFIXES[kind] + some_id


@given(kind=st.sampled_from(sorted(TWO_NAMES)), first=st.one_of(names, namespaces), last=ids)
def test_a_two_name_key_has_its_colon_free_name_first(kind: str, first: str, last: str) -> None:
    assert ":" not in first
    assert TWO_NAMES[kind](first, last) == f"{keys.PREFIXES[kind]}{first}:{last}"


def _key(draw: tuple[str, tuple[str, ...]]) -> str:
    kind, args = draw
    return ONE_ID[kind](args[0]) if kind in ONE_ID else TWO_NAMES[kind](args[0], args[1])


objects = st.one_of(
    st.tuples(st.sampled_from(sorted(ONE_ID)), st.tuples(ids)),
    st.tuples(st.sampled_from(sorted(TWO_NAMES)), st.tuples(st.one_of(names, namespaces), ids)),
)


@given(a=objects, b=objects)
def test_two_objects_share_a_key_only_if_they_are_the_same(
    a: tuple[str, tuple[str, ...]], b: tuple[str, tuple[str, ...]]
) -> None:
    if _key(a) == _key(b):
        assert a == b
    assert _key(a) not in keys.FIXED


def test_the_suffix_that_broke_the_old_key_space_names_nothing_else() -> None:
    # `<id>:partial` was another request's ID and that request's outcome so far at once.
    assert keys.request("r1:partial") != keys.partial("r1")
    assert keys.batch("B:errors") != keys.batch_errors("B")
    assert keys.children_refresh("default", "job") != keys.children("default", "job:refresh")


@given(some_id=ids, n=st.integers(min_value=2, max_value=10**6))
def test_attempt_ids_are_reserved(some_id: str, n: int) -> None:
    assert keys.is_reserved_id(keys.attempt_id(some_id, n))
    assert keys.attempt_id(some_id, 1) == some_id
    assert not keys.is_reserved_id(some_id + "~") and not keys.is_reserved_id(some_id + "~x")
