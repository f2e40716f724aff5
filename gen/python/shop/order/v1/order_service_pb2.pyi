import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from shop.order.v1 import order_pb2 as _order_pb2
from shop.order.v1 import order_events_pb2 as _order_events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateOrderRequest(_message.Message):
    __slots__ = ("request_id", "line_items")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    line_items: _containers.RepeatedCompositeFieldContainer[_order_pb2.LineItem]
    def __init__(self, request_id: _Optional[str] = ..., line_items: _Optional[_Iterable[_Union[_order_pb2.LineItem, _Mapping]]] = ...) -> None: ...

class CreateOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class GetOrderRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class ListOrdersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListOrdersResponse(_message.Message):
    __slots__ = ("orders", "next_page_token")
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[_order_pb2.Order]
    next_page_token: str
    def __init__(self, orders: _Optional[_Iterable[_Union[_order_pb2.Order, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListOrderEventsRequest(_message.Message):
    __slots__ = ("order_id", "page_size", "page_token")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    page_size: int
    page_token: str
    def __init__(self, order_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListOrderEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[OrderEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[OrderEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class OrderEvent(_message.Message):
    __slots__ = ("event_id", "sequence", "type", "occur_time", "order_placed", "order_reserved", "order_payment_authorized", "order_committing", "order_cancel_requested", "order_compensating", "order_confirmed", "order_cancelled")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    ORDER_PLACED_FIELD_NUMBER: _ClassVar[int]
    ORDER_RESERVED_FIELD_NUMBER: _ClassVar[int]
    ORDER_PAYMENT_AUTHORIZED_FIELD_NUMBER: _ClassVar[int]
    ORDER_COMMITTING_FIELD_NUMBER: _ClassVar[int]
    ORDER_CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    ORDER_COMPENSATING_FIELD_NUMBER: _ClassVar[int]
    ORDER_CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    ORDER_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    sequence: int
    type: str
    occur_time: _timestamp_pb2.Timestamp
    order_placed: _order_events_pb2.OrderPlaced
    order_reserved: _order_events_pb2.OrderReserved
    order_payment_authorized: _order_events_pb2.OrderPaymentAuthorized
    order_committing: _order_events_pb2.OrderCommitting
    order_cancel_requested: _order_events_pb2.OrderCancelRequested
    order_compensating: _order_events_pb2.OrderCompensating
    order_confirmed: _order_events_pb2.OrderConfirmed
    order_cancelled: _order_events_pb2.OrderCancelled
    def __init__(self, event_id: _Optional[str] = ..., sequence: _Optional[int] = ..., type: _Optional[str] = ..., occur_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., order_placed: _Optional[_Union[_order_events_pb2.OrderPlaced, _Mapping]] = ..., order_reserved: _Optional[_Union[_order_events_pb2.OrderReserved, _Mapping]] = ..., order_payment_authorized: _Optional[_Union[_order_events_pb2.OrderPaymentAuthorized, _Mapping]] = ..., order_committing: _Optional[_Union[_order_events_pb2.OrderCommitting, _Mapping]] = ..., order_cancel_requested: _Optional[_Union[_order_events_pb2.OrderCancelRequested, _Mapping]] = ..., order_compensating: _Optional[_Union[_order_events_pb2.OrderCompensating, _Mapping]] = ..., order_confirmed: _Optional[_Union[_order_events_pb2.OrderConfirmed, _Mapping]] = ..., order_cancelled: _Optional[_Union[_order_events_pb2.OrderCancelled, _Mapping]] = ...) -> None: ...

class CancelOrderRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class CancelOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...

class ListParkedOrdersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListParkedOrdersResponse(_message.Message):
    __slots__ = ("parked_orders", "next_page_token")
    PARKED_ORDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parked_orders: _containers.RepeatedCompositeFieldContainer[ParkedOrder]
    next_page_token: str
    def __init__(self, parked_orders: _Optional[_Iterable[_Union[ParkedOrder, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ParkedOrder(_message.Message):
    __slots__ = ("order_id", "user_id", "saga_phase", "reason", "detail", "park_time")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SAGA_PHASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PARK_TIME_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    user_id: str
    saga_phase: str
    reason: str
    detail: str
    park_time: _timestamp_pb2.Timestamp
    def __init__(self, order_id: _Optional[str] = ..., user_id: _Optional[str] = ..., saga_phase: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., park_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ResumeOrderRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class ResumeOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: _order_pb2.Order
    def __init__(self, order: _Optional[_Union[_order_pb2.Order, _Mapping]] = ...) -> None: ...
