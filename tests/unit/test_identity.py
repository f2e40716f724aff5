"""The user-id alphabet, decided once (services.common.identity): the services, the token
tool and the gateway (tests/system/test_hostile_input.py) refuse every other user id."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from services.common.errors import ErrorKind, ServiceError
from services.common.identity import USER_HEADER, caller, is_valid_user_id
from shopmesh import cli, tokens


class Context:
    """The one part of a grpc.aio servicer context that caller() reads."""

    def __init__(self, *metadata: tuple[str, Any]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # a plaintext port


REFUSED = ["", "zoë", "a b", "a\nb", "a\x00b", "a,b", "a/b", "a:b", "é", "u" * 129]


@pytest.mark.parametrize("user_id", REFUSED)
def test_caller_refuses_a_user_id_outside_the_alphabet(user_id: str) -> None:
    with pytest.raises(ServiceError) as refused:
        caller(Context((USER_HEADER, user_id)))
    assert refused.value.kind is ErrorKind.UNAUTHENTICATED


@pytest.mark.parametrize("user_id", ["alice", "Az09._@+-", "user@example.com", "u" * 128])
def test_caller_accepts_the_alphabet(user_id: str) -> None:
    assert caller(Context((USER_HEADER, user_id))).user_id == user_id
    assert is_valid_user_id(user_id)


def test_no_token_is_signed_for_a_user_outside_the_alphabet(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="A-Z a-z 0-9"):
        tokens.issue("zoë", directory=tmp_path)


def test_shopmesh_token_says_why_it_refuses(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["token", "--user", "zoë", "--keys-dir", str(tmp_path)]) == 2
    assert "user must be 1 to 128 of A-Z a-z 0-9" in capsys.readouterr().err
