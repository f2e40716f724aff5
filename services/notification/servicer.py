"""NotificationService over gRPC: check the request, call the store, encode the answer."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from services.common import pagination, validation
from services.common.convert import money, timestamp
from services.common.identity import caller
from services.notification import domain
from services.notification.store import NotificationStore
from shop.notification.v1 import notification_pb2 as pb
from shop.notification.v1 import notification_service_pb2 as rpc
from shop.notification.v1 import notification_service_pb2_grpc

Context: TypeAlias = grpc.aio.ServicerContext


class NotificationServicer(notification_service_pb2_grpc.NotificationServiceServicer):
    def __init__(self, store: NotificationStore) -> None:
        self._store = store

    async def ListNotifications(
        self, request: rpc.ListNotificationsRequest, context: Context
    ) -> rpc.ListNotificationsResponse:
        who = caller(context)
        violations = validation.violations(request)
        size = pagination.page_size(request.page_size)
        before = pagination.decode_number(request.page_token, violations)
        violations.raise_if_any()
        page = await self._store.notifications(who.user_id, before, size + 1)
        more = len(page) > size
        page = page[:size]
        return rpc.ListNotificationsResponse(
            notifications=[_notification_to_proto(n) for n in page],
            next_page_token=pagination.encode_token(str(page[-1].seq)) if more else "",
        )

    async def SetContactAddress(
        self, request: rpc.SetContactAddressRequest, context: Context
    ) -> rpc.SetContactAddressResponse:
        who = caller(context)
        validation.require_valid(request)
        contact = await self._store.set_contact(who.user_id, request.email_address)
        return rpc.SetContactAddressResponse(contact_address=_contact_to_proto(contact))

    async def GetContactAddress(
        self, request: rpc.GetContactAddressRequest, context: Context
    ) -> rpc.GetContactAddressResponse:
        who = caller(context)
        contact = await self._store.contact(who.user_id)
        return rpc.GetContactAddressResponse(contact_address=_contact_to_proto(contact))


def _contact_to_proto(c: domain.Contact) -> pb.ContactAddress:
    return pb.ContactAddress(
        user_id=c.user_id, email_address=c.email_address, update_time=timestamp(c.updated_at)
    )


def _notification_to_proto(n: domain.Notification) -> pb.Notification:
    o = n.outcome
    encoded = pb.Notification(
        event_id=o.event_id,
        order_id=o.order_id,
        user_id=o.user_id,
        order_state=o.order_state,
        cancel_reason=o.cancel_reason,
        email_address=n.email_address,
        state=f"NOTIFICATION_STATE_{n.state.value}",
        message_id=n.message_id,
        attempts=n.attempts,
        create_time=timestamp(n.created_at),
        update_time=timestamp(n.updated_at),
    )
    if o.total_minor is not None:
        encoded.total.CopyFrom(money(o.total_minor, o.currency))
    return encoded
