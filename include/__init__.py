"""Plain-Python core of the Braze <-> Lytics pipelines.

Nothing in this package imports Airflow: every module can be used and tested on its own.
"""
