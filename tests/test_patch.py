"""The shallow JSONPatch diff: applying it to the original gives the mutated document."""

from __future__ import annotations

import copy

import jsonpatch
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.patch import make_patch

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(alphabet="ab/~c", max_size=4), children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(alphabet="ab/~", max_size=3), json_values, max_size=4),
       st.dictionaries(st.text(alphabet="ab/~", max_size=3), json_values, max_size=4))
def test_patch_applies_to_the_mutated_document(original, mutated):
    patch = make_patch(original, mutated)
    assert jsonpatch.apply_patch(copy.deepcopy(original), patch) == mutated


def test_annotation_keys_are_escaped():
    patch = make_patch({"metadata": {}}, {"metadata": {"annotations": {"hpc.offload/x": "1"}}})
    assert patch == [{"op": "add", "path": "/metadata/annotations", "value": {"hpc.offload/x": "1"}}]
    patch = make_patch({"a": {"x/y": 1}}, {"a": {"x/y": 2}})
    assert patch == [{"op": "replace", "path": "/a/x~1y", "value": 2}]


def test_equal_documents_give_no_patch():
    assert make_patch({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2}]}) == []
