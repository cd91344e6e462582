from __future__ import annotations

import pytest

from registration import tokens
from registration.errors import TokenFormatError

FP = "ab" * 32


def test_token_round_trips_and_carries_the_ca_fingerprint() -> None:
    token = tokens.generate(FP)
    parsed = tokens.parse(str(token))
    assert parsed == token
    assert parsed.ca_fingerprint == FP
    assert str(token).startswith(f"crl1.{FP}.")


def test_only_the_hash_of_the_secret_matches() -> None:
    token = tokens.generate(FP)
    stored = tokens.hash_secret(token.secret)
    assert token.secret not in stored
    assert tokens.secret_matches(token.secret, stored)
    assert not tokens.secret_matches(tokens.generate(FP).secret, stored)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "crl1",
        "K10abc::server:secret",
        f"crl2.{FP}.abcdefghij.{'a' * 43}",
        f"crl1.{FP[:-1]}.abcdefghij.{'a' * 43}",
        f"crl1.{FP.upper()}.abcdefghij.{'a' * 43}",
        f"crl1.{FP}.short.{'a' * 43}",
        f"crl1.{FP}.abcdefghij.{'a' * 42}",
        f"crl1.{FP}.abcdefghij.{'a' * 43}.extra",
        f"crl1.{FP}\n.abcdefghij\n.{'a' * 43}",  # newlines inside (`$` matched before them)
        "x" * 500,
    ],
)
def test_malformed_tokens_are_refused(text: str) -> None:
    with pytest.raises(TokenFormatError):
        tokens.parse(text)


def test_non_string_token_is_refused() -> None:
    with pytest.raises(TokenFormatError):
        tokens.parse(12345)
