"""Operations: Prometheus metrics, health/readiness endpoints, the status command and the live status page."""
