"""Airflow glue for the Braze <-> Lytics pipelines: hooks (Connection -> core client),
the export sensor, and the task bodies the DAG files call. Heavy libraries (paramiko,
gnupg, requests, pandas) are imported inside functions, never at module level, so DAG
files that import this package parse fast.
"""
