"""The ingest pipeline: sources -> filter -> decode -> (segment) -> dedup -> split -> write."""
