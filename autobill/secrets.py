"""Secret references: where a credential lives, never the credential itself.

A config file says `password: {env: PBX1_DB_PASSWORD}` or `secret: {block: whmcs-secret}`;
the value is fetched only when a connector opens a connection, and `SecretRef` never prints it.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, model_validator


class SecretError(Exception):
    """A referenced secret could not be found; the message names the reference, not a value."""


class SecretRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = None
    block: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_a_value(cls, data: object) -> object:
        if isinstance(data, str):
            raise ValueError(
                "secrets are references, not values: write {env: VARIABLE_NAME} or {block: prefect-secret-block-name}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.block is None):
            raise ValueError("a secret reference names exactly one of `env` or `block`")
        return self

    def __str__(self) -> str:
        return f"env:{self.env}" if self.env else f"block:{self.block}"

    def get(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise SecretError(f"environment variable {self.env} (secret reference) is not set")
            return value
        from prefect.blocks.system import Secret  # lazy: only production runs read blocks

        try:
            return str(Secret.load(self.block).get())
        except ValueError as exc:
            raise SecretError(f"Prefect Secret block {self.block!r} could not be loaded: {exc}") from None


def reveal(ref: SecretRef | None) -> str | None:
    return None if ref is None else ref.get()
