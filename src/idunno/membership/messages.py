"""Membership protocol messages: frozen dataclasses, one packet = one optional primary
message plus piggybacked updates. Encoding lives in `idunno.membership.codec`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    FAILED = "failed"
    LEFT = "left"

    @property
    def gone(self) -> bool:
        return self in (Status.FAILED, Status.LEFT)


# --- primary messages (point to point) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str  # the name the sender expects to answer; a stranger on that address ignores it


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True)
class PingReq:
    seq: int  # the origin's sequence number, echoed back in the relayed Ack or Nack
    target: str
    target_addr: str


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int


# --- updates (gossiped, piggybacked on any packet) -------------------------------------


@dataclass(frozen=True, slots=True)
class Alive:
    name: str
    addr: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class Suspect:
    name: str
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class Dead:
    """`name` failed, as declared by `accuser`; when accuser == name the member left."""

    name: str
    incarnation: int
    accuser: str

    @property
    def left(self) -> bool:
        return self.accuser == self.name


Primary = Ping | Ack | PingReq | Nack
Update = Alive | Suspect | Dead


@dataclass(frozen=True, slots=True)
class Packet:
    sender: str  # name of the sending node
    primary: Primary | None
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class MemberState:
    """One row of a full-state push-pull exchange."""

    name: str
    addr: str
    incarnation: int
    status: Status
