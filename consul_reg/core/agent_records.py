"""The agent's records as the primary last knew them, with their IDs indexed by
fold (`fold_id`): Consul's catalog holds one row for IDs that differ only in
case, so a plan looks for another spelling of each ID it writes. The index
is kept beside the records, so that a pass over a few containers finds those
spellings without a pass over every record the agent holds (it was one per
event: ~0.25 ms at 1,000 records, issue 24). Owned by the sync loop's thread,
as the primary that holds it; other threads see a frozen copy (snapshot.py)."""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView

from consul_reg.core.records import RegisteredService, fold_id


class AgentRecords(Mapping[str, RegisteredService]):
    __slots__ = ("_records", "_by_fold")

    def __init__(self, records: Mapping[str, RegisteredService] | None = None) -> None:
        self._records: dict[str, RegisteredService] = dict(records or {})
        self._by_fold: dict[str, list[str]] = {}
        for key in self._records:
            self._by_fold.setdefault(fold_id(key), []).append(key)

    def __getitem__(self, key: str) -> RegisteredService:
        return self._records[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def get(self, key: str, default: RegisteredService | None = None) -> RegisteredService | None:  # type: ignore[override]
        return self._records.get(key, default)

    def keys(self) -> KeysView[str]:
        return self._records.keys()

    def items(self) -> ItemsView[str, RegisteredService]:
        return self._records.items()

    def values(self) -> ValuesView[RegisteredService]:
        return self._records.values()

    def spellings(self, folded: str) -> tuple[str, ...]:
        """The IDs held whose fold is `folded` (`fold_id`)."""
        return tuple(self._by_fold.get(folded, ()))

    def put(self, key: str, record: RegisteredService) -> None:
        if key not in self._records:
            self._by_fold.setdefault(fold_id(key), []).append(key)
        self._records[key] = record

    def remove(self, key: str) -> RegisteredService | None:
        record = self._records.pop(key, None)
        if record is not None:
            folded = fold_id(key)
            keys = self._by_fold[folded]
            keys.remove(key)
            if not keys:
                del self._by_fold[folded]
        return record
