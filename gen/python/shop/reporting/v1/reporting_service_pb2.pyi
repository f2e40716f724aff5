import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from shop.money.v1 import money_pb2 as _money_pb2
from shop.reporting.v1 import reporting_pb2 as _reporting_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListSkuSalesRequest(_message.Message):
    __slots__ = ("start_day", "end_day", "sku", "page_size", "page_token")
    START_DAY_FIELD_NUMBER: _ClassVar[int]
    END_DAY_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    start_day: str
    end_day: str
    sku: str
    page_size: int
    page_token: str
    def __init__(self, start_day: _Optional[str] = ..., end_day: _Optional[str] = ..., sku: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSkuSalesResponse(_message.Message):
    __slots__ = ("sales", "next_page_token")
    SALES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sales: _containers.RepeatedCompositeFieldContainer[_reporting_pb2.SkuDaySales]
    next_page_token: str
    def __init__(self, sales: _Optional[_Iterable[_Union[_reporting_pb2.SkuDaySales, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListDailyRevenueRequest(_message.Message):
    __slots__ = ("start_day", "end_day")
    START_DAY_FIELD_NUMBER: _ClassVar[int]
    END_DAY_FIELD_NUMBER: _ClassVar[int]
    start_day: str
    end_day: str
    def __init__(self, start_day: _Optional[str] = ..., end_day: _Optional[str] = ...) -> None: ...

class ListDailyRevenueResponse(_message.Message):
    __slots__ = ("days",)
    DAYS_FIELD_NUMBER: _ClassVar[int]
    days: _containers.RepeatedCompositeFieldContainer[_reporting_pb2.DayRevenue]
    def __init__(self, days: _Optional[_Iterable[_Union[_reporting_pb2.DayRevenue, _Mapping]]] = ...) -> None: ...

class ListTopProductsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListTopProductsResponse(_message.Message):
    __slots__ = ("products",)
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    products: _containers.RepeatedCompositeFieldContainer[_reporting_pb2.ProductSales]
    def __init__(self, products: _Optional[_Iterable[_Union[_reporting_pb2.ProductSales, _Mapping]]] = ...) -> None: ...

class GetUserOrderSummaryRequest(_message.Message):
    __slots__ = ("user_id", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetUserOrderSummaryResponse(_message.Message):
    __slots__ = ("user_id", "orders_confirmed", "orders_cancelled", "orders_pending", "spent", "orders", "next_page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDERS_CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    ORDERS_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    ORDERS_PENDING_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    orders_confirmed: int
    orders_cancelled: int
    orders_pending: int
    spent: _containers.RepeatedCompositeFieldContainer[_money_pb2.Money]
    orders: _containers.RepeatedCompositeFieldContainer[_reporting_pb2.UserOrder]
    next_page_token: str
    def __init__(self, user_id: _Optional[str] = ..., orders_confirmed: _Optional[int] = ..., orders_cancelled: _Optional[int] = ..., orders_pending: _Optional[int] = ..., spent: _Optional[_Iterable[_Union[_money_pb2.Money, _Mapping]]] = ..., orders: _Optional[_Iterable[_Union[_reporting_pb2.UserOrder, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetLagRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLagResponse(_message.Message):
    __slots__ = ("events_behind", "behind_duration", "applied_sequence", "stream_sequence", "stream_reachable", "last_event_time", "applied_events", "skipped_events", "parked_events")
    EVENTS_BEHIND_FIELD_NUMBER: _ClassVar[int]
    BEHIND_DURATION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STREAM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STREAM_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    APPLIED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    PARKED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    events_behind: int
    behind_duration: _duration_pb2.Duration
    applied_sequence: int
    stream_sequence: int
    stream_reachable: bool
    last_event_time: _timestamp_pb2.Timestamp
    applied_events: int
    skipped_events: int
    parked_events: int
    def __init__(self, events_behind: _Optional[int] = ..., behind_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., applied_sequence: _Optional[int] = ..., stream_sequence: _Optional[int] = ..., stream_reachable: _Optional[bool] = ..., last_event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., applied_events: _Optional[int] = ..., skipped_events: _Optional[int] = ..., parked_events: _Optional[int] = ...) -> None: ...
