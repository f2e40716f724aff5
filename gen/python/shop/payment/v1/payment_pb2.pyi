import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from shop.money.v1 import money_pb2 as _money_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PaymentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYMENT_STATE_UNSPECIFIED: _ClassVar[PaymentState]
    PAYMENT_STATE_AUTHORIZED: _ClassVar[PaymentState]
    PAYMENT_STATE_CAPTURED: _ClassVar[PaymentState]
    PAYMENT_STATE_VOIDED: _ClassVar[PaymentState]
    PAYMENT_STATE_DECLINED: _ClassVar[PaymentState]
    PAYMENT_STATE_EXPIRED: _ClassVar[PaymentState]
PAYMENT_STATE_UNSPECIFIED: PaymentState
PAYMENT_STATE_AUTHORIZED: PaymentState
PAYMENT_STATE_CAPTURED: PaymentState
PAYMENT_STATE_VOIDED: PaymentState
PAYMENT_STATE_DECLINED: PaymentState
PAYMENT_STATE_EXPIRED: PaymentState

class Account(_message.Message):
    __slots__ = ("user_id", "available_balance", "held_balance")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_BALANCE_FIELD_NUMBER: _ClassVar[int]
    HELD_BALANCE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    available_balance: _money_pb2.Money
    held_balance: _money_pb2.Money
    def __init__(self, user_id: _Optional[str] = ..., available_balance: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., held_balance: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class Payment(_message.Message):
    __slots__ = ("order_id", "user_id", "amount", "state", "create_time", "update_time", "expire_time")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    user_id: str
    amount: _money_pb2.Money
    state: PaymentState
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, order_id: _Optional[str] = ..., user_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., state: _Optional[_Union[PaymentState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
