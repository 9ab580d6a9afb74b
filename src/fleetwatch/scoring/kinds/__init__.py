"""The model kinds, by the name manifests record. A new kind is one module and one line here."""

from __future__ import annotations

from fleetwatch.errors import FleetwatchError
from fleetwatch.scoring.kinds.base import ModelKind, Scorer
from fleetwatch.scoring.kinds.covariance import CovarianceModel
from fleetwatch.scoring.kinds.device import DeviceModel
from fleetwatch.scoring.kinds.per_sensor import PerSensorModel

KINDS: dict[str, type[ModelKind]] = {
    kind.name: kind for kind in (DeviceModel, PerSensorModel, CovarianceModel)
}


class UnknownKindError(FleetwatchError):
    """A manifest names a model kind this fleetwatch does not know."""


def kind_named(name: object) -> type[ModelKind]:
    kind = KINDS.get(str(name))
    if kind is None:
        raise UnknownKindError(
            f"unknown model kind {name!r} (this fleetwatch knows {', '.join(KINDS)}); retrain it"
        )
    return kind


def new_model(name: str, nu: float, gamma: str | float, kernel: str) -> ModelKind:
    return kind_named(name)(nu, gamma, kernel)


__all__ = [
    "KINDS",
    "CovarianceModel",
    "DeviceModel",
    "ModelKind",
    "PerSensorModel",
    "Scorer",
    "kind_named",
    "new_model",
]
