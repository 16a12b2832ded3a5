"""Quantization: recipes (the table), backends (the quantizers that make files from it), export (the `recipes`
export format), search (`toolkit quantize`: the smallest file within an accuracy budget, with per-layer fallback),
explain (`--explain`: the per-layer error) and report (their records, tables and plots). Import the submodule you
need; this package imports nothing, so the export registry can load one format without the others."""
