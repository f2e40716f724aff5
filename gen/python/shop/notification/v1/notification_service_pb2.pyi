from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from shop.notification.v1 import notification_pb2 as _notification_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListNotificationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNotificationsResponse(_message.Message):
    __slots__ = ("notifications", "next_page_token")
    NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    notifications: _containers.RepeatedCompositeFieldContainer[_notification_pb2.Notification]
    next_page_token: str
    def __init__(self, notifications: _Optional[_Iterable[_Union[_notification_pb2.Notification, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SetContactAddressRequest(_message.Message):
    __slots__ = ("email_address",)
    EMAIL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    email_address: str
    def __init__(self, email_address: _Optional[str] = ...) -> None: ...

class SetContactAddressResponse(_message.Message):
    __slots__ = ("contact_address",)
    CONTACT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    contact_address: _notification_pb2.ContactAddress
    def __init__(self, contact_address: _Optional[_Union[_notification_pb2.ContactAddress, _Mapping]] = ...) -> None: ...

class GetContactAddressRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetContactAddressResponse(_message.Message):
    __slots__ = ("contact_address",)
    CONTACT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    contact_address: _notification_pb2.ContactAddress
    def __init__(self, contact_address: _Optional[_Union[_notification_pb2.ContactAddress, _Mapping]] = ...) -> None: ...
