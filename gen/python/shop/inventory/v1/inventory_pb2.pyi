import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from shop.money.v1 import money_pb2 as _money_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReservationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVATION_STATE_UNSPECIFIED: _ClassVar[ReservationState]
    RESERVATION_STATE_HELD: _ClassVar[ReservationState]
    RESERVATION_STATE_COMMITTED: _ClassVar[ReservationState]
    RESERVATION_STATE_RELEASED: _ClassVar[ReservationState]
    RESERVATION_STATE_EXPIRED: _ClassVar[ReservationState]
RESERVATION_STATE_UNSPECIFIED: ReservationState
RESERVATION_STATE_HELD: ReservationState
RESERVATION_STATE_COMMITTED: ReservationState
RESERVATION_STATE_RELEASED: ReservationState
RESERVATION_STATE_EXPIRED: ReservationState

class Product(_message.Message):
    __slots__ = ("sku", "name", "unit_price", "available_quantity", "held_quantity", "sold_quantity")
    SKU_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    HELD_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    SOLD_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    sku: str
    name: str
    unit_price: _money_pb2.Money
    available_quantity: int
    held_quantity: int
    sold_quantity: int
    def __init__(self, sku: _Optional[str] = ..., name: _Optional[str] = ..., unit_price: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., available_quantity: _Optional[int] = ..., held_quantity: _Optional[int] = ..., sold_quantity: _Optional[int] = ...) -> None: ...

class ReservationItem(_message.Message):
    __slots__ = ("sku", "quantity", "unit_price")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    unit_price: _money_pb2.Money
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_price: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("order_id", "items", "state", "expire_time", "user_id")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    items: _containers.RepeatedCompositeFieldContainer[ReservationItem]
    state: ReservationState
    expire_time: _timestamp_pb2.Timestamp
    user_id: str
    def __init__(self, order_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ReservationItem, _Mapping]]] = ..., state: _Optional[_Union[ReservationState, str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., user_id: _Optional[str] = ...) -> None: ...
