"""Conversions between protobuf messages and the plain objects of the core (shared by several servicers)."""

from __future__ import annotations

from flashstream.v1 import common_pb2

from services.common.errors import FlashStreamError
from services.common.sampling import SamplingParams


def sampling_from_pb(pb: common_pb2.SamplingParams) -> SamplingParams:
    """Validated SamplingParams (raises InvalidArgument with the offending field)."""
    return SamplingParams.from_pb(pb)


def sampling_to_pb(params: SamplingParams) -> common_pb2.SamplingParams:
    return params.to_pb(common_pb2.SamplingParams)


def error_to_pb(exc: FlashStreamError) -> common_pb2.Error:
    return common_pb2.Error(code=int(exc.code), message=exc.message)
