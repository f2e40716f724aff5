import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from shop.money.v1 import money_pb2 as _money_pb2
from shop.payment.v1 import payment_pb2 as _payment_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetAccountRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class GetAccountResponse(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: _payment_pb2.Account
    def __init__(self, account: _Optional[_Union[_payment_pb2.Account, _Mapping]] = ...) -> None: ...

class AuthorizePaymentRequest(_message.Message):
    __slots__ = ("order_id", "amount", "authorization_duration")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_DURATION_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    amount: _money_pb2.Money
    authorization_duration: _duration_pb2.Duration
    def __init__(self, order_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., authorization_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AuthorizePaymentResponse(_message.Message):
    __slots__ = ("payment",)
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    payment: _payment_pb2.Payment
    def __init__(self, payment: _Optional[_Union[_payment_pb2.Payment, _Mapping]] = ...) -> None: ...

class CapturePaymentRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class CapturePaymentResponse(_message.Message):
    __slots__ = ("payment",)
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    payment: _payment_pb2.Payment
    def __init__(self, payment: _Optional[_Union[_payment_pb2.Payment, _Mapping]] = ...) -> None: ...

class VoidPaymentRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class VoidPaymentResponse(_message.Message):
    __slots__ = ("payment",)
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    payment: _payment_pb2.Payment
    def __init__(self, payment: _Optional[_Union[_payment_pb2.Payment, _Mapping]] = ...) -> None: ...

class GetPaymentRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetPaymentResponse(_message.Message):
    __slots__ = ("payment",)
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    payment: _payment_pb2.Payment
    def __init__(self, payment: _Optional[_Union[_payment_pb2.Payment, _Mapping]] = ...) -> None: ...
