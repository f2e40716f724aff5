from shop.events.v1 import options_pb2 as _options_pb2
from shop.money.v1 import money_pb2 as _money_pb2
from shop.order.v1 import order_pb2 as _order_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrderPlaced(_message.Message):
    __slots__ = ("order_id", "user_id", "line_items", "state")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    user_id: str
    line_items: _containers.RepeatedCompositeFieldContainer[_order_pb2.LineItem]
    state: _order_pb2.OrderState
    def __init__(self, order_id: _Optional[str] = ..., user_id: _Optional[str] = ..., line_items: _Optional[_Iterable[_Union[_order_pb2.LineItem, _Mapping]]] = ..., state: _Optional[_Union[_order_pb2.OrderState, str]] = ...) -> None: ...

class OrderConfirmed(_message.Message):
    __slots__ = ("order_id", "user_id", "line_items", "total", "state")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    user_id: str
    line_items: _containers.RepeatedCompositeFieldContainer[_order_pb2.LineItem]
    total: _money_pb2.Money
    state: _order_pb2.OrderState
    def __init__(self, order_id: _Optional[str] = ..., user_id: _Optional[str] = ..., line_items: _Optional[_Iterable[_Union[_order_pb2.LineItem, _Mapping]]] = ..., total: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., state: _Optional[_Union[_order_pb2.OrderState, str]] = ...) -> None: ...

class OrderCancelled(_message.Message):
    __slots__ = ("order_id", "user_id", "line_items", "total", "state", "cancel_reason")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REASON_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    user_id: str
    line_items: _containers.RepeatedCompositeFieldContainer[_order_pb2.LineItem]
    total: _money_pb2.Money
    state: _order_pb2.OrderState
    cancel_reason: str
    def __init__(self, order_id: _Optional[str] = ..., user_id: _Optional[str] = ..., line_items: _Optional[_Iterable[_Union[_order_pb2.LineItem, _Mapping]]] = ..., total: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., state: _Optional[_Union[_order_pb2.OrderState, str]] = ..., cancel_reason: _Optional[str] = ...) -> None: ...

class OrderReserved(_message.Message):
    __slots__ = ("order_id", "line_items", "total")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    line_items: _containers.RepeatedCompositeFieldContainer[_order_pb2.LineItem]
    total: _money_pb2.Money
    def __init__(self, order_id: _Optional[str] = ..., line_items: _Optional[_Iterable[_Union[_order_pb2.LineItem, _Mapping]]] = ..., total: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class OrderPaymentAuthorized(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class OrderCommitting(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class OrderCancelRequested(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class OrderCompensating(_message.Message):
    __slots__ = ("order_id", "cancel_reason")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REASON_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    cancel_reason: str
    def __init__(self, order_id: _Optional[str] = ..., cancel_reason: _Optional[str] = ...) -> None: ...
