"""Many accounts, one command: a fleet file, a process pool or a Dask cluster, one request budget each."""
