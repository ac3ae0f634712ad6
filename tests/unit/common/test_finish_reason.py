"""The core's FinishReason is the proto's enum under the same names and numbers."""

from __future__ import annotations

from flashstream.v1 import common_pb2

from services.common.finish_reason import FinishReason


def test_the_core_finish_reasons_carry_the_proto_enum_names_and_numbers() -> None:
    assert {f"FINISH_REASON_{r.name}": r.value for r in FinishReason} == dict(common_pb2.FinishReason.items())
