"""The bwmon daemon: config, ingest, aggregation, storage, fan-out, HTTP, runtime."""
