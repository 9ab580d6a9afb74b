"""How well fleetwatch detects labelled anomalies: ``fleetwatch evaluate``, the demo's figures."""
