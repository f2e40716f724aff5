from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
EVENT_FIELD_NUMBER: _ClassVar[int]
event: _descriptor.FieldDescriptor

class EventSpec(_message.Message):
    __slots__ = ("producer", "consumers", "aggregate_field")
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_FIELD_NUMBER: _ClassVar[int]
    producer: str
    consumers: _containers.RepeatedScalarFieldContainer[str]
    aggregate_field: str
    def __init__(self, producer: _Optional[str] = ..., consumers: _Optional[_Iterable[str]] = ..., aggregate_field: _Optional[str] = ...) -> None: ...
