"""The space a canary is drawn from: a template with one slot, an alphabet, a secret length."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from .._utils import HubConfigMixin, check_integer


SLOT = "{secret}"  # where the secret goes in a canary template


@dataclass
class CanaryConfig(HubConfigMixin):
    """Canaries of one format (Carlini et al. 2019, "The Secret Sharer"): `template` with its slot `{secret}` filled
    by `length` symbols of `alphabet`. The candidate space `R` holds `len(alphabet) ** length` texts.

    Args:
        template: The canary text with exactly one `{secret}` slot, e.g. `"my PIN is {secret}"`.
        alphabet: The symbols a secret is made of, one character each and no repeats (e.g. `"0123456789"`).
        length: Symbols per secret, >= 1.

    Raises:
        ValueError: If `template` is not a string with exactly one `{secret}`, `alphabet` is not a non-empty string
            of distinct characters, or `length` is not an integer >= 1.

    Examples:
        >>> config = CanaryConfig("my PIN is {secret}", alphabet="0123456789", length=4)
        >>> config.text("0042"), config.space_size
        ('my PIN is 0042', 10000)
    """

    config_name: ClassVar[str] = "canary_config.json"

    template: str = field(default="my PIN is {secret}", metadata={"help": "canary text with one {secret} slot"})
    alphabet: str = field(default="0123456789", metadata={"help": "the symbols of a secret, one character each"})
    length: int = field(default=6, metadata={"help": "symbols per secret"})

    def __post_init__(self):
        if not isinstance(self.template, str) or self.template.count(SLOT) != 1:
            count = self.template.count(SLOT) if isinstance(self.template, str) else None
            raise ValueError(
                f"`template` must be a string with exactly one `{SLOT}` slot (where the secret goes), got "
                f"{self.template!r:.80}" + (f" with {count} slots." if count is not None else ".")
            )
        if not isinstance(self.alphabet, str) or not self.alphabet:
            raise ValueError(
                f"`alphabet` must be a non-empty string of symbols (e.g. '0123456789'), got {self.alphabet!r:.80}."
            )
        repeated = sorted({c for c in self.alphabet if self.alphabet.count(c) > 1})
        if repeated:
            raise ValueError(f"`alphabet` repeats the symbols {repeated}: each symbol must appear once.")
        self.length = check_integer(self.length, "length", minimum=1)

    @property
    def space_size(self) -> int:
        """`|R|`: the number of possible secrets, `len(alphabet) ** length`."""
        return len(self.alphabet) ** self.length

    def text(self, secret: str) -> str:
        """The canary text of `secret` (the template with its slot filled).

        Args:
            secret: `length` symbols of the alphabet.
        """
        return self.template.replace(SLOT, secret)

    def check_secret(self, secret, name: str = "secret") -> str:
        """Return `secret` if it is `length` symbols of the alphabet, else raise a `ValueError` naming `name`.

        Args:
            secret: The value to check.
            name: The argument's name in the error.
        """
        if not isinstance(secret, str) or len(secret) != self.length or any(c not in self.alphabet for c in secret):
            raise ValueError(
                f"`{name}` must be a string of {self.length} symbols from {self.alphabet!r}, got {secret!r:.80}."
            )
        return secret

    def index(self, secret: str) -> int:
        """The place of `secret` in the enumeration order of `secrets()` (the secret read as a base-|alphabet| number).

        Args:
            secret: `length` symbols of the alphabet.
        """
        base, value = len(self.alphabet), 0
        for symbol in self.check_secret(secret):
            value = value * base + self.alphabet.index(symbol)
        return value

    def secrets(self) -> Iterator[str]:
        """Every secret of the space, in order (lazily: the space may be large)."""
        return ("".join(s) for s in itertools.product(self.alphabet, repeat=self.length))
