"""Why a request ended: one enum for every stage, numbered as flashstream.v1.FinishReason (the core never
imports protobuf, so the numbers are repeated here and a test checks them against the proto)."""

from __future__ import annotations

import enum


class FinishReason(enum.IntEnum):
    UNSPECIFIED = 0  # not finished
    STOP = 1  # a stop token id was generated (the scheduler decides)
    LENGTH = 2  # max_tokens reached, or the model's context is full (the scheduler decides)
    EOS = 3  # the model's end-of-sequence token (the scheduler decides)
    STOP_STRING = 4  # a stop string appeared in the text (the tokenizer decides)
    ABORT = 5  # the client cancelled, or the request was aborted upstream
