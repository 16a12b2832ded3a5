"""The parts of `toolkit.train`, one job each: the run's configuration (config), where it runs (replicas), what each
step trains on (batches), and what survives an interrupt (checkpoint). Nothing is imported here, so that importing
one part loads only what that part needs; the entry point is `toolkit.train`."""
