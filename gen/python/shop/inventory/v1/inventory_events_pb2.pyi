import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from shop.events.v1 import options_pb2 as _options_pb2
from shop.inventory.v1 import inventory_pb2 as _inventory_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StockReserved(_message.Message):
    __slots__ = ("order_id", "user_id", "items", "expire_time")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    user_id: str
    items: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.ReservationItem]
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, order_id: _Optional[str] = ..., user_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[_inventory_pb2.ReservationItem, _Mapping]]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StockReleased(_message.Message):
    __slots__ = ("order_id", "user_id", "items", "expired")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    user_id: str
    items: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.ReservationItem]
    expired: bool
    def __init__(self, order_id: _Optional[str] = ..., user_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[_inventory_pb2.ReservationItem, _Mapping]]] = ..., expired: _Optional[bool] = ...) -> None: ...

class StockCommitted(_message.Message):
    __slots__ = ("order_id", "user_id", "items")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    user_id: str
    items: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.ReservationItem]
    def __init__(self, order_id: _Optional[str] = ..., user_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[_inventory_pb2.ReservationItem, _Mapping]]] = ...) -> None: ...

class StockRestocked(_message.Message):
    __slots__ = ("sku", "quantity", "available_quantity")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    available_quantity: int
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ..., available_quantity: _Optional[int] = ...) -> None: ...
