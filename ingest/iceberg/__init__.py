"""Iceberg tables in R2 Data Catalog: what the worker uploads is also committed to a table.

`catalog` connects (pyiceberg's REST catalog, a Cloudflare API token), `schema` turns the worker's Arrow
types into ones every Iceberg reader accepts, `commits` creates and evolves tables and adds data files to
them exactly once (each snapshot names the batches it adds). pyiceberg is synchronous: callers on the
event loop run these in threads.
"""
