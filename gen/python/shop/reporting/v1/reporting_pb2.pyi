import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from shop.money.v1 import money_pb2 as _money_pb2
from shop.order.v1 import order_pb2 as _order_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SkuDaySales(_message.Message):
    __slots__ = ("day", "sku", "product_name", "units_sold", "revenue")
    DAY_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_NAME_FIELD_NUMBER: _ClassVar[int]
    UNITS_SOLD_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    day: str
    sku: str
    product_name: str
    units_sold: int
    revenue: _money_pb2.Money
    def __init__(self, day: _Optional[str] = ..., sku: _Optional[str] = ..., product_name: _Optional[str] = ..., units_sold: _Optional[int] = ..., revenue: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class DayRevenue(_message.Message):
    __slots__ = ("day", "orders_confirmed", "revenue")
    DAY_FIELD_NUMBER: _ClassVar[int]
    ORDERS_CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    day: str
    orders_confirmed: int
    revenue: _money_pb2.Money
    def __init__(self, day: _Optional[str] = ..., orders_confirmed: _Optional[int] = ..., revenue: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class ProductSales(_message.Message):
    __slots__ = ("sku", "product_name", "units_sold", "revenue")
    SKU_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_NAME_FIELD_NUMBER: _ClassVar[int]
    UNITS_SOLD_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    sku: str
    product_name: str
    units_sold: int
    revenue: _money_pb2.Money
    def __init__(self, sku: _Optional[str] = ..., product_name: _Optional[str] = ..., units_sold: _Optional[int] = ..., revenue: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class ReportLine(_message.Message):
    __slots__ = ("sku", "product_name", "quantity", "unit_price")
    SKU_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_NAME_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    sku: str
    product_name: str
    quantity: int
    unit_price: _money_pb2.Money
    def __init__(self, sku: _Optional[str] = ..., product_name: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_price: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class UserOrder(_message.Message):
    __slots__ = ("order_id", "state", "lines", "total", "cancel_reason", "place_time", "update_time")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REASON_FIELD_NUMBER: _ClassVar[int]
    PLACE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    state: _order_pb2.OrderState
    lines: _containers.RepeatedCompositeFieldContainer[ReportLine]
    total: _money_pb2.Money
    cancel_reason: str
    place_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, order_id: _Optional[str] = ..., state: _Optional[_Union[_order_pb2.OrderState, str]] = ..., lines: _Optional[_Iterable[_Union[ReportLine, _Mapping]]] = ..., total: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., cancel_reason: _Optional[str] = ..., place_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
