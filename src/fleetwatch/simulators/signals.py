"""How a healthy sensor behaves: baseline, noise, slow drift and a daily cycle.

Each (device, sensor) pair gets its own parameters drawn once from the seed, so two devices of
the same fleet look alike but not identical, as real pumps do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class SensorProfile:
    """Fleet-typical behaviour of one sensor kind."""

    name: str
    baseline: float
    noise: float  # standard deviation of the white noise
    daily_amplitude: float
    drift_per_day: float  # standard deviation across devices of the slow drift


#: Named sensors first; a fleet with more sensors than these gets sensor_11, sensor_12, ...
NAMED_SENSORS: tuple[SensorProfile, ...] = (
    SensorProfile("temperature", 70.0, 0.5, 3.0, 0.3),
    SensorProfile("pressure", 2.0, 0.02, 0.05, 0.005),
    SensorProfile("vibration", 0.12, 0.005, 0.01, 0.001),
    SensorProfile("current", 12.0, 0.2, 1.0, 0.05),
    SensorProfile("voltage", 230.0, 1.0, 2.0, 0.2),
    SensorProfile("flow_rate", 120.0, 1.5, 5.0, 0.5),
    SensorProfile("humidity", 45.0, 0.8, 4.0, 0.3),
    SensorProfile("rpm", 1500.0, 10.0, 30.0, 3.0),
    SensorProfile("power", 3.5, 0.05, 0.3, 0.01),
    SensorProfile("torque", 25.0, 0.4, 1.5, 0.1),
)


def sensor_profiles(count: int) -> list[SensorProfile]:
    """The first ``count`` sensors of a device.

    >>> [p.name for p in sensor_profiles(12)][-3:]
    ['torque', 'sensor_11', 'sensor_12']
    """
    profiles = list(NAMED_SENSORS[:count])
    for index in range(len(profiles) + 1, count + 1):
        profiles.append(SensorProfile(f"sensor_{index:02d}", 10.0 * index, 0.1 * index, index, 0.0))
    return profiles


@dataclass(frozen=True)
class FleetSignals:
    """Per-(device, sensor) parameters; arrays of shape (devices, sensors)."""

    baseline: FloatArray
    noise: FloatArray
    daily_amplitude: FloatArray
    daily_phase: FloatArray
    drift_per_day: FloatArray

    @classmethod
    def draw(
        cls,
        devices: int,
        profiles: list[SensorProfile],
        rng: np.random.Generator,
        daily_cycle: float = 1.0,
        drift: float = 1.0,
    ) -> FleetSignals:
        shape = (devices, len(profiles))
        base = np.array([p.baseline for p in profiles])
        noise = np.array([p.noise for p in profiles])
        amplitude = np.array([p.daily_amplitude for p in profiles])
        drift_scale = drift * np.array([p.drift_per_day for p in profiles])
        return cls(
            baseline=base * rng.uniform(0.9, 1.1, shape),
            noise=noise * rng.uniform(0.7, 1.3, shape),
            daily_amplitude=daily_cycle * amplitude * rng.uniform(0.5, 1.5, shape),
            daily_phase=rng.uniform(0.0, 2 * np.pi, shape),
            drift_per_day=drift_scale * rng.standard_normal(shape),
        )

    def healthy(
        self, event_seconds: FloatArray, elapsed_days: FloatArray, noise: FloatArray
    ) -> FloatArray:
        """Readings at per-device event times (seconds since epoch, shape (devices,)).

        ``noise`` is standard-normal of shape (devices, sensors); ``elapsed_days`` the per-device
        time since the simulation started, for the drift.
        """
        day_angle = (2 * np.pi / SECONDS_PER_DAY) * (event_seconds % SECONDS_PER_DAY)
        result: FloatArray = (
            self.baseline
            + self.drift_per_day * elapsed_days[:, None]
            + self.daily_amplitude * np.sin(day_angle[:, None] + self.daily_phase)
            + self.noise * noise
        )
        return result
