"""Per-part verdicts to the plant: ``linewatch verdicts`` (results topic -> MQTT and OPC UA)."""
