"""Cinder volume backup actions.

How ``create`` counts a backup chain
------------------------------------
Cinder makes an incremental backup on top of the volume's *newest* backup
(whoever made it), and refuses when the volume has no backup yet or when
that newest backup is not ``available``. A chain is therefore a full backup
followed by the incremental backups made after it. ``create`` counts it the
way Cinder will extend it:

1. list the volume's backups (all of them: made by this action, by hand, by
   another tool; Cinder does not tell them apart when choosing a parent) and
   order them by ``created_at`` (then id);
2. no backup at all, or a newest backup that is not ``available`` (e.g.
   ``error``): make a full backup, since Cinder would refuse an incremental;
3. otherwise the current chain is the newest full backup plus every later
   backup, leaving out failed ones (status ``error``: they hold no data and
   nothing is built on them); a backup whose ``is_incremental`` is unknown
   counts as an incremental;
4. chain length counts the full backup: with ``max_chain_length`` = 5 a
   chain is one full and at most four incrementals; when one more backup
   would make it longer than that, a new full backup starts a new chain.

So a full backup made by hand starts a new chain, and incrementals made by
hand lengthen the current one, exactly as they do on disk.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Iterable
from typing import Any

from mistral_lib import actions

from hotload import sdk

from .. import common

LOG = logging.getLogger(__name__)

#: Backup statuses from which waiting for another status is pointless.
FAILURE_STATUSES = ("error", "error_restoring")

#: Default maximum number of backups in a chain (full one included).
DEFAULT_MAX_CHAIN_LENGTH = 5

_EPOCH = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class ChainPlan:
    """What kind of backup to make next, and why.

    :param incremental: whether to make an incremental backup.
    :param length: length of the chain once the new backup exists.
    :param reason: human-readable explanation of the decision.
    """

    incremental: bool
    length: int
    reason: str


def plan_backup(
    backups: Iterable[Any], max_chain_length: int = DEFAULT_MAX_CHAIN_LENGTH
) -> ChainPlan:
    """Decide between a full and an incremental backup (see module doc).

    :param backups: the volume's existing backups (SDK ``Backup`` objects or
        anything with ``id``, ``status``, ``is_incremental``, ``created_at``).
    :param max_chain_length: maximum backups in one chain, full one included.
    :returns: the decision.
    """
    ordered = sorted(backups, key=lambda b: (_created(b), str(b.id)))
    if not ordered:
        return ChainPlan(False, 1, "the volume has no backup yet")
    newest = ordered[-1]
    if newest.status != "available":
        return ChainPlan(
            False,
            1,
            f"the newest backup {newest.id} is {newest.status!r} and Cinder "
            "only builds an incremental backup on an available one",
        )
    chain: list[Any] = []
    for backup in ordered:
        if backup.status == "error":
            continue
        if backup.is_incremental is False:
            chain = []
        chain.append(backup)
    length = len(chain)
    if length + 1 > max_chain_length:
        return ChainPlan(
            False,
            1,
            f"the current chain already has {length} backup(s) and "
            f"max_chain_length is {max_chain_length}",
        )
    return ChainPlan(
        True,
        length + 1,
        f"extends the chain of {length} backup(s) started by {chain[0].id}",
    )


def _created(backup: Any) -> datetime.datetime:
    try:
        when = datetime.datetime.fromisoformat(str(backup.created_at))
    except ValueError:
        return _EPOCH
    if when.tzinfo is None:  # Cinder returns naive UTC timestamps
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when


def _max_chain_length(value: Any) -> int:
    number = 0
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            number = int(value)
        except ValueError:
            pass
    if number < 1:
        raise common.fail(
            f"max_chain_length must be an integer >= 1, got {value!r}"
        )
    return number


class AssertStatus(common.StatusAssertion):
    """Assert a volume backup is in a given status, optionally waiting.

    Fails with the backup's id, its actual and the expected status. With
    ``timeout`` > 0 the backup is checked every ``interval`` seconds until
    it reaches the status; an ``error`` status fails at once.

    :param backup_id: ID of the volume backup.
    :param status: expected status, e.g. ``available``.
    :param timeout: seconds to wait for the status; 0 checks once.
    :param interval: seconds between two checks while waiting.
    """

    _resource_type = "volume backup"
    _failure_statuses = FAILURE_STATUSES

    def __init__(
        self,
        backup_id: str,
        status: str = "available",
        timeout: float = 0,
        interval: float = common.DEFAULT_INTERVAL,
    ) -> None:
        super().__init__(backup_id, status, timeout, interval)

    def _fetch(self, conn: Any) -> Any:
        return conn.block_storage.get_backup(self.resource_id)


class Create(actions.Action):
    """Create a volume backup, starting a new chain when it gets too long.

    With ``incremental`` true the backup is incremental unless the volume
    has no usable backup yet or its current chain (one full backup and the
    incrementals after it, whoever made them) already holds
    ``max_chain_length`` backups: then a full backup starts a new chain.
    The result is the new backup, plus ``chain`` (``length``, ``reason``).

    :param volume_id: ID of the volume to back up.
    :param backup_name: name of the new backup.
    :param snapshot_id: back up this snapshot of the volume instead of the
        volume itself.
    :param description: description of the new backup.
    :param container: backup container (e.g. Swift container) to use.
    :param incremental: allow an incremental backup; false always makes a
        full backup.
    :param force: back up the volume even if it is attached (``in-use``).
    :param max_chain_length: maximum number of backups in a chain, the full
        one included (5: one full and up to four incrementals).
    """

    def __init__(
        self,
        volume_id: str,
        backup_name: str,
        snapshot_id: str | None = None,
        description: str | None = None,
        container: str | None = None,
        incremental: bool = True,
        force: bool = True,
        max_chain_length: int = DEFAULT_MAX_CHAIN_LENGTH,
    ) -> None:
        super().__init__()
        self.volume_id = volume_id
        self.backup_name = backup_name
        self.snapshot_id = snapshot_id
        self.description = description
        self.container = container
        self.incremental = incremental
        self.force = force
        self.max_chain_length = max_chain_length

    def run(self, context: Any) -> dict[str, Any]:
        max_length = _max_chain_length(self.max_chain_length)
        with sdk.openstack_connection(context) as conn:
            if self.incremental:
                with common.api_errors("backups of volume", self.volume_id):
                    existing = [
                        b
                        for b in conn.block_storage.backups(
                            details=True, volume_id=self.volume_id
                        )
                        if b.volume_id == self.volume_id
                    ]
                plan = plan_backup(existing, max_length)
            else:
                plan = ChainPlan(False, 1, "incremental is false")
            LOG.info(
                "volume %s: %s backup, %s",
                self.volume_id,
                "incremental" if plan.incremental else "full",
                plan.reason,
            )
            with common.api_errors("backup of volume", self.volume_id):
                backup = conn.block_storage.create_backup(**self._attrs(plan))
            result = common.as_dict(backup)
        result["is_incremental"] = plan.incremental
        result["chain"] = {"length": plan.length, "reason": plan.reason}
        return result

    def _attrs(self, plan: ChainPlan) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "volume_id": self.volume_id,
            "name": self.backup_name,
            "is_incremental": plan.incremental,
            "force": bool(self.force),
        }
        optional = {
            "snapshot_id": self.snapshot_id,
            "description": self.description,
            "container": self.container,
        }
        attrs.update({k: v for k, v in optional.items() if v is not None})
        return attrs
