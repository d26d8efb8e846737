"""API keys in the official format: the official client accepts ours, and a typo is caught offline."""

from __future__ import annotations

import alter_sdk
from hypothesis import given
from hypothesis import strategies as st

from alter_agents.server.keys import ALPHABET, KEY_KINDS, generate_key, is_well_formed, key_hash


@given(st.sampled_from(KEY_KINDS), st.integers(min_value=6, max_value=27), st.sampled_from(ALPHABET))
def test_every_minted_key_passes_the_official_check_and_a_one_character_typo_fails_both(
    kind: str, position: int, replacement: str
) -> None:
    key = generate_key(kind)  # type: ignore[arg-type]
    assert is_well_formed(key) and alter_sdk.is_valid_key(key)
    typo = key[:position] + replacement + key[position + 1:]
    if typo != key:
        assert not is_well_formed(typo) and not alter_sdk.is_valid_key(typo)


def test_only_a_hash_identifies_a_key() -> None:
    key = generate_key()
    assert key not in key_hash(key) and len(key_hash(key)) == 64
