"""Conversions between protobuf messages and the plain objects of the core (shared by several servicers)."""

from __future__ import annotations

from flashstream.v1 import common_pb2

from services.common.errors import ErrorCode, FlashStreamError
from services.common.sampling import SamplingParams
from services.common.step import TokenLogprobs


def sampling_from_pb(pb: common_pb2.SamplingParams) -> SamplingParams:
    """SamplingParams as sent, not checked: the gateway validates them on entry and every later stage trusts
    them (an entry point calls `validate` on the result)."""
    return SamplingParams.from_pb(pb)


def sampling_to_pb(params: SamplingParams) -> common_pb2.SamplingParams:
    return params.to_pb(common_pb2.SamplingParams)


def error_to_pb(exc: FlashStreamError) -> common_pb2.Error:
    return common_pb2.Error(code=int(exc.code), message=exc.message)


def logprobs_to_pb(lp: TokenLogprobs) -> common_pb2.TokenLogprob:
    return common_pb2.TokenLogprob(token_id=lp.token_id, logprob=lp.logprob,
                                   top=[common_pb2.TopLogprob(token_id=t, logprob=v) for t, v in lp.top])


def logprobs_from_pb(pb: common_pb2.TokenLogprob) -> TokenLogprobs:
    return TokenLogprobs(pb.token_id, pb.logprob, [(t.token_id, t.logprob) for t in pb.top])


def error_from_pb(pb: common_pb2.Error) -> FlashStreamError:
    """The error a peer reported (a code this version does not know reads as UNKNOWN)."""
    try:
        code = ErrorCode(pb.code)
    except ValueError:
        code = ErrorCode.UNKNOWN
    return FlashStreamError(pb.message, code)
