import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from shop.inventory.v1 import inventory_pb2 as _inventory_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetProductRequest(_message.Message):
    __slots__ = ("sku",)
    SKU_FIELD_NUMBER: _ClassVar[int]
    sku: str
    def __init__(self, sku: _Optional[str] = ...) -> None: ...

class GetProductResponse(_message.Message):
    __slots__ = ("product",)
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    product: _inventory_pb2.Product
    def __init__(self, product: _Optional[_Union[_inventory_pb2.Product, _Mapping]] = ...) -> None: ...

class ListProductsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListProductsResponse(_message.Message):
    __slots__ = ("products", "next_page_token")
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    products: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.Product]
    next_page_token: str
    def __init__(self, products: _Optional[_Iterable[_Union[_inventory_pb2.Product, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReserveStockRequest(_message.Message):
    __slots__ = ("order_id", "items", "hold_duration")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    HOLD_DURATION_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    items: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.ReservationItem]
    hold_duration: _duration_pb2.Duration
    def __init__(self, order_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[_inventory_pb2.ReservationItem, _Mapping]]] = ..., hold_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ReserveStockResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: _inventory_pb2.Reservation
    def __init__(self, reservation: _Optional[_Union[_inventory_pb2.Reservation, _Mapping]] = ...) -> None: ...

class GetReservationRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetReservationResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: _inventory_pb2.Reservation
    def __init__(self, reservation: _Optional[_Union[_inventory_pb2.Reservation, _Mapping]] = ...) -> None: ...

class CommitReservationRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class CommitReservationResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: _inventory_pb2.Reservation
    def __init__(self, reservation: _Optional[_Union[_inventory_pb2.Reservation, _Mapping]] = ...) -> None: ...

class ReleaseReservationRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class ReleaseReservationResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: _inventory_pb2.Reservation
    def __init__(self, reservation: _Optional[_Union[_inventory_pb2.Reservation, _Mapping]] = ...) -> None: ...

class RestockProductRequest(_message.Message):
    __slots__ = ("sku", "quantity", "request_id")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    request_id: str
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class RestockProductResponse(_message.Message):
    __slots__ = ("product",)
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    product: _inventory_pb2.Product
    def __init__(self, product: _Optional[_Union[_inventory_pb2.Product, _Mapping]] = ...) -> None: ...
