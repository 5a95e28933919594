"""The sweep report, built from the jobs' JSON files alone: jobs, aggregation, rendering, plots.
Imports only utils and errors; only cli imports it."""
